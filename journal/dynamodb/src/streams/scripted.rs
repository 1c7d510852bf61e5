//! A scripted, in-memory DynamoDB Streams for the reader's tests: shards that close and have
//! children, empty pages, trimming, expired iterators — what moto (one shard that never closes)
//! cannot show. It answers the three calls the way the service documents them.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::api::{CallError, ChangeRecord, RecordsPage, ShardInfo, ShardList, StreamsApi};
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
    calls: HashMap<&'static str, usize>,
}

#[derive(Debug)]
struct Shard {
    info: ShardInfo,
    slots: Vec<Slot>,
    /// Slots before this one are trimmed.
    horizon: usize,
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

    pub fn open_shard(&self, id: &str, parent: Option<&str>) {
        self.script().shards.push(Shard {
            info: ShardInfo {
                id: id.into(),
                parent: parent.map(Into::into),
                closed: false,
            },
            slots: Vec::new(),
            horizon: 0,
        });
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
            let record = ChangeRecord {
                sequence_number: Some(format!("{:021}", script.sequence)),
                removed: image.is_none(),
                new_image: image,
            };
            script.shard(id).slots.push(Slot::Record(record));
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
        let start = match exclusive_start_shard_id {
            Some(id) => script.shards.iter().position(|s| s.info.id == id).unwrap() + 1,
            None => 0,
        };
        let size = match script.describe_page {
            0 => usize::MAX,
            n => n,
        };
        let shards: Vec<ShardInfo> = script.shards[start..]
            .iter()
            .take(size)
            .map(|s| s.info.clone())
            .collect();
        let more = start + shards.len() < script.shards.len();
        Ok(ShardList {
            last_evaluated_shard_id: more.then(|| shards.last().unwrap().id.clone()),
            shards,
        })
    }

    async fn get_shard_iterator(
        &self,
        _stream_arn: &str,
        shard_id: &str,
        after_sequence_number: Option<&str>,
    ) -> Result<Option<String>, CallError> {
        let mut script = self.script();
        script.called("GetShardIterator");
        let Some(index) = script.shards.iter().position(|s| s.info.id == shard_id) else {
            return Err(not_found("GetShardIterator", shard_id.into()));
        };
        let shard = &script.shards[index];
        let position = match after_sequence_number {
            None => shard.horizon,
            Some(seq) => {
                let at = shard.slots.iter().position(|slot| {
                    matches!(slot, Slot::Record(r) if r.sequence_number.as_deref() == Some(seq))
                });
                match at {
                    Some(at) if at >= shard.horizon => at + 1,
                    _ => return Err(CallError::TrimmedData),
                }
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
