//! Reading the events table's DynamoDB Stream: the scale-mode change feed (groundwork for the
//! relay to Kafka).
//!
//! A stream is a set of shards; a shard splits into children when it closes. Records of one
//! aggregate are in order within a shard, and a child continues where its parent ended, so the
//! reader drains a parent before it starts any of its children. Progress is a checkpoint per
//! shard (the last sequence number handed out, and whether the shard is finished); the caller
//! stores the returned checkpoints once it has handled the envelopes (after Kafka's delivery
//! report, in the relay) and passes them back next time.

use std::collections::{BTreeMap, HashSet};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodbstreams::operation::get_records::GetRecordsError;
use aws_sdk_dynamodbstreams::operation::get_shard_iterator::GetShardIteratorError;
use aws_sdk_dynamodbstreams::types::{
    AttributeValue as StreamValue, OperationType, ShardIteratorType,
};
use kiroku_journal::Envelope;

use crate::DynamoDbJournal;
use crate::error::{DynamoDbError, classify};
use crate::items::{self, HEAD_SEQ, Item, SEQ};
use crate::retry::retrying;

/// Progress in one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardCheckpoint {
    /// The sequence number of the last record handed out; `None` to start at the trim horizon.
    pub last_sequence_number: Option<String>,
    /// The shard is closed and was read to its end; its children may be read.
    pub finished: bool,
}

/// Progress in the whole stream, per shard id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamCheckpoints {
    pub shards: BTreeMap<String, ShardCheckpoint>,
}

/// Envelopes read, and the checkpoints after them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamBatch {
    pub envelopes: Vec<Envelope>,
    pub checkpoints: StreamCheckpoints,
}

/// Reads the events table's stream from per-shard checkpoints.
#[derive(Debug, Clone)]
pub struct StreamsReader {
    journal: DynamoDbJournal,
    stream_arn: String,
}

struct Shard {
    id: String,
    parent: Option<String>,
}

impl StreamsReader {
    pub async fn new(journal: &DynamoDbJournal) -> Result<Self, DynamoDbError> {
        Ok(Self {
            stream_arn: journal.events_stream_arn().await?,
            journal: journal.clone(),
        })
    }

    pub fn stream_arn(&self) -> &str {
        &self.stream_arn
    }

    /// Reads up to about `max_records` envelopes after `checkpoints`: every shard's records in
    /// order, parents before children. Stream-head updates and deletions are not envelopes and
    /// are skipped (their positions still advance the checkpoint).
    pub async fn read(
        &self,
        checkpoints: &StreamCheckpoints,
        max_records: usize,
    ) -> Result<StreamBatch, DynamoDbError> {
        let shards = self.shards().await?;
        let known: HashSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
        let mut batch = StreamBatch {
            envelopes: Vec::new(),
            checkpoints: checkpoints.clone(),
        };
        // Passes until no shard can make progress: a shard finished in one pass frees its
        // children for the next.
        loop {
            let mut progressed = false;
            for shard in &shards {
                let state = batch
                    .checkpoints
                    .shards
                    .get(&shard.id)
                    .cloned()
                    .unwrap_or_default();
                if !readable(shard, &state, &known, &batch.checkpoints)
                    || batch.envelopes.len() >= max_records
                {
                    continue;
                }
                let before = state.clone();
                let after = self
                    .drain(&shard.id, state, max_records, &mut batch.envelopes)
                    .await?;
                progressed |= after != before;
                batch.checkpoints.shards.insert(shard.id.clone(), after);
            }
            if !progressed || batch.envelopes.len() >= max_records {
                return Ok(batch);
            }
        }
    }

    /// All shards of the stream, following `LastEvaluatedShardId`.
    async fn shards(&self) -> Result<Vec<Shard>, DynamoDbError> {
        let mut out = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let description = retrying(self.journal.retry(), "DescribeStream", |_| {
                let start = start.clone();
                async move {
                    self.journal
                        .streams_client()
                        .describe_stream()
                        .stream_arn(&self.stream_arn)
                        .set_exclusive_start_shard_id(start)
                        .send()
                        .await
                        .map_err(|e| classify("DescribeStream", &e))
                }
            })
            .await?
            .stream_description
            .unwrap_or_else(|| {
                aws_sdk_dynamodbstreams::types::StreamDescription::builder().build()
            });
            for shard in description.shards() {
                if let Some(id) = shard.shard_id() {
                    out.push(Shard {
                        id: id.to_owned(),
                        parent: shard.parent_shard_id().map(str::to_owned),
                    });
                }
            }
            match description.last_evaluated_shard_id {
                Some(next) => start = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// An iterator after the checkpoint, or at the trim horizon when there is none — or when the
    /// checkpoint itself was trimmed (older than 24 hours: records were lost to the feed, and
    /// the read model's gap repair from the journal takes over).
    async fn shard_iterator(
        &self,
        shard_id: &str,
        state: &ShardCheckpoint,
    ) -> Result<Option<String>, DynamoDbError> {
        let mut after = state.last_sequence_number.clone();
        loop {
            let kind = match after {
                Some(_) => ShardIteratorType::AfterSequenceNumber,
                None => ShardIteratorType::TrimHorizon,
            };
            let got = retrying(self.journal.retry(), "GetShardIterator", |_| {
                let (kind, after) = (kind.clone(), after.clone());
                async move {
                    let sent = self
                        .journal
                        .streams_client()
                        .get_shard_iterator()
                        .stream_arn(&self.stream_arn)
                        .shard_id(shard_id)
                        .shard_iterator_type(kind)
                        .set_sequence_number(after)
                        .send()
                        .await;
                    match sent {
                        Ok(out) => Ok(Some(out.shard_iterator)),
                        Err(e)
                            if matches!(
                                e.as_service_error(),
                                Some(GetShardIteratorError::TrimmedDataAccessException(_))
                            ) =>
                        {
                            Ok(None)
                        }
                        Err(e) => Err(classify("GetShardIterator", &e)),
                    }
                }
            })
            .await?;
            match got {
                Some(iterator) => return Ok(iterator),
                None if after.is_some() => {
                    tracing::warn!(shard_id, checkpoint = ?after, "checkpoint trimmed from the stream; restarting at the trim horizon");
                    after = None;
                }
                None => {
                    return Err(DynamoDbError::Service {
                        operation: "GetShardIterator",
                        code: "TrimmedDataAccessException".into(),
                        message: format!("shard {shard_id} is trimmed at its horizon"),
                    });
                }
            }
        }
    }

    /// Reads one shard from `state` until it is caught up, closed, or `max_records` is reached.
    async fn drain(
        &self,
        shard_id: &str,
        mut state: ShardCheckpoint,
        max_records: usize,
        out: &mut Vec<Envelope>,
    ) -> Result<ShardCheckpoint, DynamoDbError> {
        let client = self.journal.streams_client();
        let mut iterator = self.shard_iterator(shard_id, &state).await?;
        let mut refreshed = 0;
        let table = self.journal.config().events_table();
        while let Some(current) = iterator.take() {
            let page = retrying(self.journal.retry(), "GetRecords", |_| {
                let current = current.clone();
                async move {
                    match client
                        .get_records()
                        .shard_iterator(current)
                        .limit(1000)
                        .send()
                        .await
                    {
                        Ok(page) => Ok(Some(page)),
                        // Iterators live 15 minutes; the checkpoint says where to pick up.
                        Err(e)
                            if matches!(
                                e.as_service_error(),
                                Some(GetRecordsError::ExpiredIteratorException(_))
                                    | Some(GetRecordsError::TrimmedDataAccessException(_))
                            ) =>
                        {
                            Ok(None)
                        }
                        Err(e) => Err(classify("GetRecords", &e)),
                    }
                }
            })
            .await?;
            let Some(page) = page else {
                refreshed += 1;
                if refreshed > 3 {
                    return Err(DynamoDbError::Unavailable {
                        operation: "GetRecords",
                        attempts: refreshed,
                        elapsed_ms: 0,
                        last: format!("shard {shard_id}: iterator keeps expiring"),
                    });
                }
                iterator = self.shard_iterator(shard_id, &state).await?;
                continue;
            };
            let records = page.records.unwrap_or_default();
            let empty = records.is_empty();
            for record in records {
                let Some(change) = record.dynamodb else {
                    continue;
                };
                if let Some(seq) = &change.sequence_number {
                    state.last_sequence_number = Some(seq.clone());
                }
                if record.event_name == Some(OperationType::Remove) {
                    continue;
                }
                let Some(image) = change.new_image else {
                    continue;
                };
                let item: Item = image
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, convert(v)?)))
                    .collect();
                if matches!(item.get(SEQ), Some(AttributeValue::N(n)) if n == &HEAD_SEQ.to_string())
                {
                    continue;
                }
                out.push(items::envelope(&table, &item)?);
            }
            match page.next_shard_iterator {
                None => state.finished = true,
                Some(next) if !empty && out.len() < max_records => iterator = Some(next),
                Some(_) => {}
            }
        }
        Ok(state)
    }
}

/// A shard may be read when it is not finished and its parent is finished — or trimmed from the
/// stream (older than 24 hours), or it has none.
fn readable(
    shard: &Shard,
    state: &ShardCheckpoint,
    known: &HashSet<&str>,
    checkpoints: &StreamCheckpoints,
) -> bool {
    let parent_done = match &shard.parent {
        Some(p) if known.contains(p.as_str()) => {
            checkpoints.shards.get(p).is_some_and(|c| c.finished)
        }
        _ => true,
    };
    !state.finished && parent_done
}

/// A stream record's attribute as a table attribute (the journal writes only S, N and B).
fn convert(value: StreamValue) -> Option<AttributeValue> {
    match value {
        StreamValue::S(v) => Some(AttributeValue::S(v)),
        StreamValue::N(v) => Some(AttributeValue::N(v)),
        StreamValue::B(v) => Some(AttributeValue::B(Blob::new(v.into_inner()))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parent: Option<&str>) -> Shard {
        Shard {
            id: id.into(),
            parent: parent.map(Into::into),
        }
    }

    fn finished(ids: &[&str]) -> StreamCheckpoints {
        let done = ShardCheckpoint {
            last_sequence_number: Some("1".into()),
            finished: true,
        };
        StreamCheckpoints {
            shards: ids
                .iter()
                .map(|id| (id.to_string(), done.clone()))
                .collect(),
        }
    }

    /// After a split, children wait until the parent is drained; a trimmed parent does not block.
    #[test]
    fn parents_are_read_before_children() {
        let shards = [
            shard("child-a", Some("parent")),
            shard("parent", None),
            shard("child-b", Some("parent")),
            shard("orphan", Some("trimmed")),
        ];
        let known: HashSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
        let readable_ids = |checkpoints: &StreamCheckpoints| -> Vec<String> {
            shards
                .iter()
                .filter(|s| {
                    let state = checkpoints.shards.get(&s.id).cloned().unwrap_or_default();
                    readable(s, &state, &known, checkpoints)
                })
                .map(|s| s.id.clone())
                .collect()
        };
        assert_eq!(
            readable_ids(&StreamCheckpoints::default()),
            ["parent", "orphan"]
        );
        assert_eq!(
            readable_ids(&finished(&["parent"])),
            ["child-a", "child-b", "orphan"]
        );
        let all = finished(&["parent", "child-a", "child-b", "orphan"]);
        assert!(readable_ids(&all).is_empty());
    }
}
