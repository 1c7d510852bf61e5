//! Per-shard checkpoints and the rules on them that need no call to the service: which shards
//! may be read now, which are owed from their first record, which checkpoints stand for records
//! the stream no longer has, and which are done with.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};

use super::api::ShardInfo;

/// Progress in one shard.
///
/// `(None, unfinished)` stored for a shard means "owed from its first record": the reader
/// records every child of a shard it read to the end that way, so that a child it has not
/// started yet is still checked for trimmed records when it is read (possibly by a later
/// process, from the stored checkpoints). Store it like any other checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardCheckpoint {
    /// The sequence number of the last record handed out; `None` when no record was handed out
    /// yet (the shard is read from its first record, or from the trim horizon when it has no
    /// checkpoint at all).
    pub last_sequence_number: Option<String>,
    /// The shard is closed and was read to its end; its children may be read.
    pub finished: bool,
}

impl ShardCheckpoint {
    /// Recorded, nothing handed out and not finished: owed from the shard's first record.
    pub(crate) fn is_owed(&self) -> bool {
        self.last_sequence_number.is_none() && !self.finished
    }
}

/// Progress in the whole stream, per shard id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamCheckpoints {
    pub shards: BTreeMap<String, ShardCheckpoint>,
}

impl StreamCheckpoints {
    /// Records every listed shard whose parent is finished and that has no checkpoint yet as owed
    /// from its first record. The parent's checkpoint may belong to a shard the stream no longer
    /// lists (it is dropped only after this ran).
    pub(crate) fn owe_children(&mut self, shards: &[ShardInfo]) {
        for shard in shards {
            let parent_finished = shard
                .parent
                .as_ref()
                .and_then(|p| self.shards.get(p))
                .is_some_and(|c| c.finished);
            if parent_finished && !self.shards.contains_key(&shard.id) {
                self.shards
                    .insert(shard.id.clone(), ShardCheckpoint::default());
            }
        }
    }

    /// An unfinished checkpoint of a shard the stream no longer lists: a shard is listed until
    /// its last record is trimmed, so the records after that checkpoint are gone.
    pub(crate) fn lost(&self, known: &HashSet<&str>) -> Option<(&str, &ShardCheckpoint)> {
        self.shards
            .iter()
            .find(|(id, state)| !state.finished && !known.contains(id.as_str()))
            .map(|(id, state)| (id.as_str(), state))
    }

    /// Drops the checkpoints of finished shards the stream no longer lists (they only grow the
    /// map).
    pub(crate) fn prune(&mut self, known: &HashSet<&str>) {
        self.shards.retain(|id, _| known.contains(id.as_str()));
    }
}

/// A shard may be read when it is not finished and its parent is finished — or no longer
/// listed, or it has none. A parent that is no longer listed but still owed never gets here:
/// [`StreamCheckpoints::lost`] stops the read first.
pub(crate) fn readable(
    shard: &ShardInfo,
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

/// Orders two sequence numbers (decimal digits, up to 40 of them, not always zero-padded to
/// the same length) by their value.
pub(crate) fn sequence_order(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}
