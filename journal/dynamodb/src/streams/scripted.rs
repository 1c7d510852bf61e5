//! A scripted, in-memory DynamoDB Streams for the reader's tests: shards that close and have
//! children, empty pages, trimming, expired iterators — what moto (one shard that never closes)
//! cannot show. It answers the three calls the way the service documents them.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::api::{
    CallError, ChangeRecord, Position, RecordsPage, ShardInfo, ShardList, StreamsApi,
};
use super::shards::sequence_order;
use crate::DynamoDbError;
use crate::error::Failure;
use crate::items::Item;

#[derive(Debug, Default)]
pub(crate) struct ScriptedStreams {
    script: Mutex<Script>,
}

#[derive(Debug, Default)]
struct Script {
    shards: Vec<Shard>,
    iterators: HashMap<String, Issued>,
    issued: u64,
    sequence: u64,
    /// Shards per `DescribeStream` page; 0 for all in one.
    describe_page: usize,
    /// The GetRecords calls (1-based) that answer `ExpiredIteratorException`.
    expire_on_get_records: Vec<usize>,
    /// The GetRecords call (1-based) before which a shard splits (see `split_on_get_records`).
    split_on_get_records: Option<(usize, String)>,
    calls: HashMap<&'static str, usize>,
}

#[derive(Debug)]
struct Shard {
    info: ShardInfo,
    slots: Vec<Slot>,
    /// Slots before this one are trimmed.
    horizon: usize,
    /// Not created yet: `DescribeStream` does not list it (see `split_on_get_records`).
    hidden: bool,
}

#[derive(Debug, Clone)]
enum Slot {
    Record(ChangeRecord),
    /// A stretch of the shard without records: `GetRecords` answers an empty page there.
    Empty,
}

#[derive(Debug, Clone)]
struct Issued {
    shard: usize,
    position: usize,
    expired: bool,
}

impl ScriptedStreams {
    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists at most `n` shards per `DescribeStream` page.
    pub fn describe_page_size(&self, n: usize) {
        self.script().describe_page = n;
    }

    /// A new open shard. Its `StartingSequenceNumber` is its first record's sequence number
    /// (none until it has one), unless `starts_at` sets it.
    pub fn open_shard(&self, id: &str, parent: Option<&str>) {
        self.script().shards.push(Shard {
            info: ShardInfo {
                id: id.into(),
                parent: parent.map(Into::into),
                closed: false,
                starting_sequence_number: None,
            },
            slots: Vec::new(),
            horizon: 0,
            hidden: false,
        });
    }

    /// Sets the shard's `StartingSequenceNumber`, e.g. below its first record's number (the
    /// service only promises that no record is below it).
    pub fn starts_at(&self, id: &str, sequence_number: &str) {
        self.script().shard(id).info.starting_sequence_number = Some(sequence_number.into());
    }

    /// The shard exists (records can be appended) but `DescribeStream` does not list it until
    /// its parent splits (`split_on_get_records`).
    pub fn hide(&self, id: &str) {
        self.script().shard(id).hidden = true;
    }

    /// Just before the `n`-th GetRecords call from now is answered, `parent` closes and its
    /// hidden children appear: the split happens while a read is under way.
    pub fn split_on_get_records(&self, n: usize, parent: &str) {
        let mut script = self.script();
        let at = script.count("GetRecords") + n;
        script.split_on_get_records = Some((at, parent.into()));
    }

    pub fn close(&self, id: &str) {
        self.script().shard(id).info.closed = true;
    }

    /// The shard's records are all trimmed: `DescribeStream` lists it no longer.
    pub fn remove_shard(&self, id: &str) {
        self.script().shards.retain(|s| s.info.id != id);
    }

    /// Appends one record per image (`None`: a deletion) with the next sequence numbers.
    pub fn append(&self, id: &str, images: impl IntoIterator<Item = Option<Item>>) {
        let mut script = self.script();
        for image in images {
            script.sequence += 1;
            let sequence_number = format!("{:021}", script.sequence);
            let shard = script.shard(id);
            let start = &mut shard.info.starting_sequence_number;
            start.get_or_insert_with(|| sequence_number.clone());
            let record = ChangeRecord {
                sequence_number: Some(sequence_number),
                removed: image.is_none(),
                new_image: image,
            };
            shard.slots.push(Slot::Record(record));
        }
    }

    /// Appends `n` stretches without records (each one empty page).
    pub fn empty_pages(&self, id: &str, n: usize) {
        let mut script = self.script();
        script
            .shard(id)
            .slots
            .extend(std::iter::repeat_n(Slot::Empty, n));
    }

    /// Trims the shard's first `n` slots (older than the retention).
    pub fn trim(&self, id: &str, n: usize) {
        self.script().shard(id).horizon = n;
    }

    /// Every iterator handed out so far has expired (15 minutes passed).
    pub fn expire_iterators(&self) {
        for issued in self.script().iterators.values_mut() {
            issued.expired = true;
        }
    }

    /// The `n`-th GetRecords call from now expires the iterator it was given.
    pub fn expire_on_get_records(&self, n: usize) {
        let mut script = self.script();
        let at = script.count("GetRecords") + n;
        script.expire_on_get_records.push(at);
    }

    /// Calls of `operation` so far.
    pub fn calls(&self, operation: &str) -> usize {
        self.script().count(operation)
    }
}

impl Script {
    fn shard(&mut self, id: &str) -> &mut Shard {
        self.shards
            .iter_mut()
            .find(|s| s.info.id == id)
            .unwrap_or_else(|| panic!("no scripted shard {id}"))
    }

    fn count(&self, operation: &str) -> usize {
        self.calls.get(operation).copied().unwrap_or(0)
    }

    fn called(&mut self, operation: &'static str) -> usize {
        let n = self.calls.entry(operation).or_default();
        *n += 1;
        *n
    }

    fn issue(&mut self, shard: usize, position: usize) -> String {
        self.issued += 1;
        let id = format!("iterator-{}", self.issued);
        let issued = Issued {
            shard,
            position,
            expired: false,
        };
        self.iterators.insert(id.clone(), issued);
        id
    }
}

fn not_found(operation: &'static str, what: String) -> CallError {
    CallError::Failed(Failure::Permanent(DynamoDbError::Service {
        operation,
        code: "ResourceNotFoundException".into(),
        message: what,
    }))
}

#[async_trait]
impl StreamsApi for ScriptedStreams {
    async fn describe_stream(
        &self,
        _stream_arn: &str,
        exclusive_start_shard_id: Option<&str>,
    ) -> Result<ShardList, CallError> {
        let mut script = self.script();
        script.called("DescribeStream");
        let listed: Vec<&ShardInfo> = script
            .shards
            .iter()
            .filter(|s| !s.hidden)
            .map(|s| &s.info)
            .collect();
        let start = match exclusive_start_shard_id {
            Some(id) => listed.iter().position(|s| s.id == id).unwrap() + 1,
            None => 0,
        };
        let size = match script.describe_page {
            0 => usize::MAX,
            n => n,
        };
        let shards: Vec<ShardInfo> = listed[start..]
            .iter()
            .take(size)
            .map(|&s| s.clone())
            .collect();
        let more = start + shards.len() < listed.len();
        Ok(ShardList {
            last_evaluated_shard_id: more.then(|| shards.last().unwrap().id.clone()),
            shards,
        })
    }

    async fn get_shard_iterator(
        &self,
        _stream_arn: &str,
        shard_id: &str,
        position: Position<'_>,
    ) -> Result<Option<String>, CallError> {
        let mut script = self.script();
        script.called("GetShardIterator");
        let Some(index) = script
            .shards
            .iter()
            .position(|s| s.info.id == shard_id && !s.hidden)
        else {
            return Err(not_found("GetShardIterator", shard_id.into()));
        };
        let shard = &script.shards[index];
        let position = match position {
            Position::TrimHorizon => shard.horizon,
            Position::After(seq) => {
                let at = shard.slots.iter().position(|slot| {
                    matches!(slot, Slot::Record(r) if r.sequence_number.as_deref() == Some(seq))
                });
                match at {
                    Some(at) if at >= shard.horizon => at + 1,
                    _ => return Err(CallError::TrimmedData),
                }
            }
            Position::At(seq) => {
                // The first record at or after `seq`; older than the horizon: trimmed.
                let at = shard
                    .slots
                    .iter()
                    .position(|slot| {
                        matches!(slot, Slot::Record(r) if r.sequence_number.as_deref()
                            .is_some_and(|n| sequence_order(n, seq).is_ge()))
                    })
                    .unwrap_or(shard.slots.len());
                if at < shard.horizon {
                    return Err(CallError::TrimmedData);
                }
                at
            }
        };
        Ok(Some(script.issue(index, position)))
    }

    async fn get_records(&self, iterator: &str, limit: i32) -> Result<RecordsPage, CallError> {
        let mut script = self.script();
        let call = script.called("GetRecords");
        let Some(issued) = script.iterators.get(iterator).cloned() else {
            return Err(not_found("GetRecords", iterator.into()));
        };
        if issued.expired || script.expire_on_get_records.contains(&call) {
            return Err(CallError::ExpiredIterator);
        }
        if let Some((_, parent)) = script.split_on_get_records.take_if(|(at, _)| *at == call) {
            script.shard(&parent).info.closed = true;
            for shard in &mut script.shards {
                if shard.info.parent.as_ref() == Some(&parent) {
                    shard.hidden = false;
                }
            }
        }
        let shard = &script.shards[issued.shard];
        if issued.position < shard.horizon {
            return Err(CallError::TrimmedData);
        }
        let mut records = Vec::new();
        let mut position = issued.position;
        match shard.slots.get(position) {
            Some(Slot::Empty) => position += 1,
            _ => {
                while let Some(Slot::Record(record)) = shard.slots.get(position) {
                    if records.len() >= limit as usize {
                        break;
                    }
                    records.push(record.clone());
                    position += 1;
                }
            }
        }
        // A closed shard read to its end has no next iterator; an open one at its tip gives an
        // iterator at the same place.
        let at_end = position >= shard.slots.len();
        let next_shard_iterator = if at_end && shard.info.closed {
            None
        } else {
            Some(script.issue(issued.shard, position))
        };
        Ok(RecordsPage {
            records,
            next_shard_iterator,
        })
    }
}
