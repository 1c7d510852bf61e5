//! How envelopes, stream heads, command records and snapshots are laid out as DynamoDB items.
//!
//! Attribute names are short because they count toward the 400 KB item size.

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use kiroku_journal::{
    CommandOutcome, CommandRecord, Envelope, EventMetadata, NewEvent, SnapshotRecord, StreamId,
};

use crate::error::DynamoDbError;

pub(crate) type Item = HashMap<String, AttributeValue>;

/// Partition key of every table.
pub(crate) const PK: &str = "pk";
/// Sort key of the events and snapshots tables.
pub(crate) const SEQ: &str = "seq";
/// The stream head's sort key: events start at 1, so 0 is free for it.
pub(crate) const HEAD_SEQ: u64 = 0;
/// The stream head's attribute holding the highest sequence number.
pub(crate) const HEAD: &str = "head";

/// DynamoDB's item size limit (400 KB).
pub(crate) const MAX_ITEM_BYTES: usize = 400 * 1024;
/// DynamoDB's limit on one transaction's total size (4 MB).
pub(crate) const MAX_TRANSACTION_BYTES: usize = 4 * 1024 * 1024;
/// DynamoDB's limit on one transaction's item count.
pub(crate) const MAX_TRANSACTION_ITEMS: usize = 100;

/// `aggregate_type#aggregate_id`, with `\` and `#` escaped in the type so distinct streams never
/// share a key (the id is last and needs no escaping).
pub(crate) fn stream_key(stream: &StreamId) -> String {
    format!("{}#{}", escape(&stream.aggregate_type), stream.aggregate_id)
}

/// `principal#command_id`, escaped like [`stream_key`].
pub(crate) fn command_key(principal: &str, command_id: &str) -> String {
    format!("{}#{command_id}", escape(principal))
}

fn escape(part: &str) -> String {
    part.replace('\\', "\\\\").replace('#', "\\#")
}

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn b(v: &[u8]) -> AttributeValue {
    AttributeValue::B(Blob::new(v))
}

pub(crate) fn event_key(stream: &StreamId, sequence: u64) -> Item {
    HashMap::from([
        (PK.into(), s(stream_key(stream))),
        (SEQ.into(), n(sequence)),
    ])
}

pub(crate) fn head_key(stream: &StreamId) -> Item {
    event_key(stream, HEAD_SEQ)
}

pub(crate) fn command_item_key(principal: &str, command_id: &str) -> Item {
    HashMap::from([(PK.into(), s(command_key(principal, command_id)))])
}

pub(crate) fn event_item(
    stream: &StreamId,
    sequence: u64,
    event: &NewEvent,
    meta: &EventMetadata,
) -> Item {
    let mut item = event_key(stream, sequence);
    item.extend([
        ("at".into(), s(&stream.aggregate_type)),
        ("aid".into(), s(&stream.aggregate_id)),
        ("et".into(), s(&event.event_type)),
        ("sv".into(), n(event.schema_version)),
        ("p".into(), b(&event.payload)),
        ("ts".into(), n(meta.timestamp_ms)),
        ("cid".into(), s(&meta.command_id)),
        ("corr".into(), s(&meta.correlation_id)),
        ("cause".into(), s(&meta.causation_id)),
        ("pr".into(), s(&meta.principal)),
    ]);
    item
}

pub(crate) fn envelope(table: &str, item: &Item) -> Result<Envelope, DynamoDbError> {
    let r = Reader { table, item };
    Ok(Envelope {
        stream: StreamId::new(r.s("at")?, r.s("aid")?),
        sequence: r.n(SEQ)?,
        global_position: 0,
        event_type: r.s("et")?,
        schema_version: r.n("sv")?,
        payload: r.b("p")?,
        metadata: EventMetadata {
            command_id: r.s("cid")?,
            correlation_id: r.s("corr")?,
            causation_id: r.s("cause")?,
            principal: r.s("pr")?,
            timestamp_ms: r.n("ts")?,
        },
    })
}

pub(crate) fn command_item(record: &CommandRecord) -> Item {
    let mut item = command_item_key(&record.principal, &record.command_id);
    item.extend([
        ("pr".into(), s(&record.principal)),
        ("cid".into(), s(&record.command_id)),
        ("at".into(), s(&record.stream.aggregate_type)),
        ("aid".into(), s(&record.stream.aggregate_id)),
        ("rec".into(), n(record.recorded_at_ms)),
    ]);
    match &record.outcome {
        CommandOutcome::Succeeded {
            version,
            first_sequence,
            last_sequence,
        } => item.extend([
            ("kind".into(), s("succeeded")),
            ("ver".into(), n(version)),
            ("first".into(), n(first_sequence)),
            ("last".into(), n(last_sequence)),
        ]),
        CommandOutcome::Rejected { code, message } => item.extend([
            ("kind".into(), s("rejected")),
            ("code".into(), n(code)),
            ("msg".into(), s(message)),
        ]),
    }
    item
}

pub(crate) fn command_record(table: &str, item: &Item) -> Result<CommandRecord, DynamoDbError> {
    let r = Reader { table, item };
    let outcome = match r.s("kind")?.as_str() {
        "succeeded" => CommandOutcome::Succeeded {
            version: r.n("ver")?,
            first_sequence: r.n("first")?,
            last_sequence: r.n("last")?,
        },
        "rejected" => CommandOutcome::Rejected {
            code: r.n("code")?,
            message: r.s("msg")?,
        },
        other => return Err(r.malformed(format!("unknown outcome kind {other}"))),
    };
    Ok(CommandRecord {
        principal: r.s("pr")?,
        command_id: r.s("cid")?,
        stream: StreamId::new(r.s("at")?, r.s("aid")?),
        outcome,
        recorded_at_ms: r.n("rec")?,
    })
}

pub(crate) fn snapshot_item(snapshot: &SnapshotRecord) -> Item {
    let mut item = event_key(&snapshot.stream, snapshot.sequence);
    item.extend([
        ("ts".into(), n(snapshot.timestamp_ms)),
        ("st".into(), b(&snapshot.state)),
    ]);
    item
}

pub(crate) fn snapshot(
    table: &str,
    stream: &StreamId,
    item: &Item,
) -> Result<SnapshotRecord, DynamoDbError> {
    let r = Reader { table, item };
    Ok(SnapshotRecord {
        stream: stream.clone(),
        sequence: r.n(SEQ)?,
        timestamp_ms: r.n("ts")?,
        state: r.b("st")?,
    })
}

/// The stream head's highest sequence number, from a head item.
pub(crate) fn head(table: &str, item: &Item) -> Result<u64, DynamoDbError> {
    Reader { table, item }.n(HEAD)
}

/// DynamoDB's size of an item: attribute names plus values (strings and binaries by length,
/// numbers at most 21 bytes). Slightly pessimistic for numbers, exact otherwise.
pub(crate) fn item_size(item: &Item) -> usize {
    item.iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    AttributeValue::S(v) => v.len(),
                    AttributeValue::N(_) => 21,
                    AttributeValue::B(v) => v.as_ref().len(),
                    _ => 1,
                }
        })
        .sum()
}

/// Typed access to an item's attributes with errors that name the item.
struct Reader<'a> {
    table: &'a str,
    item: &'a Item,
}

impl Reader<'_> {
    fn malformed(&self, reason: String) -> DynamoDbError {
        let key = match self.item.get(PK) {
            Some(AttributeValue::S(k)) => k.clone(),
            _ => "?".into(),
        };
        DynamoDbError::Malformed {
            table: self.table.into(),
            key,
            reason,
        }
    }

    fn get(&self, name: &str) -> Result<&AttributeValue, DynamoDbError> {
        self.item
            .get(name)
            .ok_or_else(|| self.malformed(format!("attribute {name} is missing")))
    }

    fn s(&self, name: &str) -> Result<String, DynamoDbError> {
        match self.get(name)? {
            AttributeValue::S(v) => Ok(v.clone()),
            other => Err(self.malformed(format!("attribute {name} is not a string: {other:?}"))),
        }
    }

    fn n<T: std::str::FromStr>(&self, name: &str) -> Result<T, DynamoDbError> {
        match self.get(name)? {
            AttributeValue::N(v) => v
                .parse()
                .map_err(|_| self.malformed(format!("attribute {name} is out of range: {v}"))),
            other => Err(self.malformed(format!("attribute {name} is not a number: {other:?}"))),
        }
    }

    fn b(&self, name: &str) -> Result<Vec<u8>, DynamoDbError> {
        match self.get(name)? {
            AttributeValue::B(v) => Ok(v.as_ref().to_vec()),
            other => Err(self.malformed(format!("attribute {name} is not binary: {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_distinct_streams_never_collide() {
        let a = stream_key(&StreamId::new("a#b", "c"));
        let b = stream_key(&StreamId::new("a", "b#c"));
        assert_ne!(a, b);
        assert_eq!(stream_key(&StreamId::new("room", "r1")), "room#r1");
        assert_ne!(command_key("a#", "b"), command_key("a", "#b"));
    }

    #[test]
    fn items_round_trip() {
        let stream = StreamId::new("room", "r1");
        let meta = EventMetadata {
            command_id: "c".into(),
            correlation_id: "corr".into(),
            causation_id: String::new(),
            principal: "ann".into(),
            timestamp_ms: 17,
        };
        let event = NewEvent {
            event_type: "room.Created".into(),
            schema_version: 2,
            payload: vec![1, 2, 3],
        };
        let e = envelope("t", &event_item(&stream, 4, &event, &meta)).unwrap();
        assert_eq!(
            (e.sequence, e.payload, e.metadata),
            (4, vec![1, 2, 3], meta)
        );
        for outcome in [
            CommandOutcome::Succeeded {
                version: 3,
                first_sequence: 2,
                last_sequence: 3,
            },
            CommandOutcome::Rejected {
                code: 9,
                message: "no".into(),
            },
        ] {
            let record = CommandRecord {
                principal: "ann".into(),
                command_id: "c".into(),
                stream: stream.clone(),
                outcome,
                recorded_at_ms: 5,
            };
            assert_eq!(command_record("t", &command_item(&record)).unwrap(), record);
        }
    }

    #[test]
    fn a_missing_attribute_names_the_item() {
        let err = envelope("t_events", &head_key(&StreamId::new("room", "r1"))).unwrap_err();
        assert!(err.to_string().contains("t_events item room#r1"), "{err}");
    }
}
