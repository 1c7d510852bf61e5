//! Reading the events table's DynamoDB Stream: the scale-mode change feed (groundwork for the
//! relay to Kafka).
//!
//! A stream is a set of shards; a shard splits into children when it closes. Records of one
//! aggregate are in order within a shard, and a child continues where its parent ended, so the
//! reader drains a parent to its end before it starts any of its children. Progress is a
//! checkpoint per shard (the last sequence number handed out, and whether the shard is
//! finished); the caller stores the returned checkpoints once it has handled the envelopes (after
//! Kafka's delivery report, in the relay) and passes them back next time.
//!
//! The rules the reader keeps (each tested against a scripted client in `tests.rs`):
//! - An empty page does not mean "caught up": an open shard can answer several empty pages
//!   before its records (and always does at its tip). The reader follows `NextShardIterator`
//!   through at most [`MAX_EMPTY_PAGES`] empty pages per shard and call, and keeps the iterator
//!   for the next call, so each call gets further.
//! - A shard is finished only when `NextShardIterator` is null; only then are its children read.
//! - An expired iterator (15 minutes) is renewed from the checkpoint.
//! - A checkpoint older than the 24-hour retention is [`StreamsError::CheckpointTrimmed`], never
//!   a skip to the oldest record still there.
//! - When a shard is finished, each of its children is recorded as owed from its first record
//!   (`(None, unfinished)`). Such a child is read from `TRIM_HORIZON`, and the first record that
//!   comes back must be the shard's first (its `StartingSequenceNumber`); when it is later, an
//!   iterator `AT_SEQUENCE_NUMBER` of the start decides: refused as trimmed, the shard's first
//!   records are gone and the read fails with [`StreamsError::ShardStartTrimmed`]. An owed shard
//!   the stream no longer lists is the same error, not a skip to its children.

mod api;
mod error;
#[cfg(test)]
mod scripted;
mod shards;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::types::AttributeValue;
use kiroku_journal::Envelope;

use self::api::{
    CallError, ChangeRecord, Position, RecordsPage, SdkStreams, ShardInfo, StreamsApi,
};
pub use self::error::StreamsError;
pub use self::shards::{ShardCheckpoint, StreamCheckpoints};
use self::shards::{readable, sequence_order};
use crate::error::{DynamoDbError, Failure};
use crate::items::{self, HEAD_SEQ, SEQ};
use crate::retry::retrying;
use crate::{DynamoDbJournal, RetryPolicy};

/// Empty pages followed per shard in one [`StreamsReader::read`] before it moves on (the iterator
/// is kept for the next call).
pub const MAX_EMPTY_PAGES: usize = 4;

/// Iterator renewals per shard in one call before the read gives up as unavailable.
const MAX_RENEWALS: u32 = 3;

/// `GetRecords` returns at most 1,000 records a page.
const PAGE_LIMIT: usize = 1000;

/// Envelopes read, and the checkpoints after them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamBatch {
    pub envelopes: Vec<Envelope>,
    pub checkpoints: StreamCheckpoints,
}

/// Reads the events table's stream from per-shard checkpoints. Cheap to clone; clones share the
/// iterators kept between calls.
#[derive(Clone)]
pub struct StreamsReader {
    api: Arc<dyn StreamsApi>,
    retry: RetryPolicy,
    table: String,
    stream_arn: String,
    kept: Arc<Mutex<HashMap<String, KeptIterator>>>,
}

/// An iterator that continues a shard exactly after `after` (the checkpoint it was kept at).
struct KeptIterator {
    after: Option<String>,
    iterator: String,
}

impl fmt::Debug for StreamsReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamsReader")
            .field("stream_arn", &self.stream_arn)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl StreamsReader {
    pub async fn new(journal: &DynamoDbJournal) -> Result<Self, DynamoDbError> {
        let api = SdkStreams {
            client: journal.streams_client().clone(),
        };
        Ok(Self::with_api(
            Arc::new(api),
            journal.retry().clone(),
            journal.config().events_table(),
            journal.events_stream_arn().await?,
        ))
    }

    pub(crate) fn with_api(
        api: Arc<dyn StreamsApi>,
        retry: RetryPolicy,
        table: String,
        stream_arn: String,
    ) -> Self {
        Self {
            api,
            retry,
            table,
            stream_arn,
            kept: Arc::default(),
        }
    }

    pub fn stream_arn(&self) -> &str {
        &self.stream_arn
    }

    /// Reads up to about `max_records` envelopes after `checkpoints`: every shard's records in
    /// order, parents before children. Stream-head updates and deletions are not envelopes and
    /// are skipped (their positions still advance the checkpoint). Children of finished shards
    /// are recorded as owed from their first record; checkpoints of finished shards the stream
    /// no longer lists are dropped.
    pub async fn read(
        &self,
        checkpoints: &StreamCheckpoints,
        max_records: usize,
    ) -> Result<StreamBatch, StreamsError> {
        let mut shards = self.shards().await?;
        let mut batch = StreamBatch {
            envelopes: Vec::new(),
            checkpoints: checkpoints.clone(),
        };
        self.settle(&shards, &mut batch.checkpoints)?;
        // Passes until no shard finishes: a shard finished in one pass frees its children for
        // the next; any other shard stopped for a reason another pass would not change.
        loop {
            let (mut finished_one, mut closed_since_listing) = (false, false);
            let known: HashSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
            for shard in &shards {
                if batch.envelopes.len() >= max_records {
                    break;
                }
                let recorded = batch.checkpoints.shards.get(&shard.id);
                let owed = recorded.is_some_and(ShardCheckpoint::is_owed);
                let state = recorded.cloned().unwrap_or_default();
                if !readable(shard, &state, &known, &batch.checkpoints) {
                    continue;
                }
                let after = self
                    .drain(
                        shard,
                        state.clone(),
                        owed,
                        max_records,
                        &mut batch.envelopes,
                    )
                    .await?;
                if after.finished {
                    finished_one = true;
                    closed_since_listing |= !shard.closed;
                }
                if after != state {
                    batch.checkpoints.shards.insert(shard.id.clone(), after);
                    batch.checkpoints.owe_children(&shards);
                }
            }
            if closed_since_listing {
                // It split after the listing: list again, so that its children are recorded as
                // owed before these checkpoints are handed out.
                shards = self.shards().await?;
                self.settle(&shards, &mut batch.checkpoints)?;
            }
            if !finished_one || batch.envelopes.len() >= max_records {
                return Ok(batch);
            }
        }
    }

    /// Brings `checkpoints` in line with the listed `shards`: children of finished shards are
    /// owed, an unfinished checkpoint of a shard no longer listed is a loss, finished ones of
    /// such shards are dropped.
    fn settle(
        &self,
        shards: &[ShardInfo],
        checkpoints: &mut StreamCheckpoints,
    ) -> Result<(), StreamsError> {
        checkpoints.owe_children(shards);
        let known: HashSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
        if let Some((id, state)) = checkpoints.lost(&known) {
            return Err(match &state.last_sequence_number {
                Some(checkpoint) => self.trimmed(id, checkpoint),
                None => self.start_trimmed(id, None, None),
            });
        }
        checkpoints.prune(&known);
        Ok(())
    }

    /// All shards of the stream, following `LastEvaluatedShardId`.
    async fn shards(&self) -> Result<Vec<ShardInfo>, DynamoDbError> {
        let mut out = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let page = retrying(&self.retry, "DescribeStream", |_| {
                let start = start.as_deref();
                async move {
                    self.api
                        .describe_stream(&self.stream_arn, start)
                        .await
                        .map_err(|e| unexpected("DescribeStream", e))
                }
            })
            .await?;
            out.extend(page.shards);
            match page.last_evaluated_shard_id {
                Some(next) => start = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Reads one shard from `state` until it is finished, `max_records` is reached, or
    /// [`MAX_EMPTY_PAGES`] empty pages were followed; keeps the iterator where it stopped. An
    /// `owed` shard is checked for trimmed first records before any record is handed out.
    async fn drain(
        &self,
        shard: &ShardInfo,
        mut state: ShardCheckpoint,
        owed: bool,
        max_records: usize,
        out: &mut Vec<Envelope>,
    ) -> Result<ShardCheckpoint, StreamsError> {
        let mut unchecked = owed;
        let kept = self.take_kept(&shard.id, &state);
        let mut iterator = match kept {
            Some(iterator) => iterator,
            None => match self.shard_iterator(shard, &state).await? {
                Some(iterator) => iterator,
                None => return self.finished(shard, state, unchecked).await,
            },
        };
        let (mut empty_pages, mut renewals) = (0, 0);
        loop {
            if out.len() >= max_records || empty_pages >= MAX_EMPTY_PAGES {
                self.keep(&shard.id, &state, iterator);
                return Ok(state);
            }
            let limit = (max_records - out.len()).clamp(1, PAGE_LIMIT);
            let Some(page) = self.records(&iterator, limit).await? else {
                // Expired (or trimmed under it): a new iterator from the checkpoint continues
                // exactly after the last record handed out, so nothing is lost or repeated.
                renewals += 1;
                if renewals > MAX_RENEWALS {
                    return Err(DynamoDbError::Unavailable {
                        operation: "GetRecords",
                        attempts: renewals,
                        elapsed_ms: 0,
                        last: format!("shard {}: the iterator keeps expiring", shard.id),
                    }
                    .into());
                }
                tracing::debug!(shard_id = %shard.id, "shard iterator expired, renewing it from the checkpoint");
                match self.shard_iterator(shard, &state).await? {
                    Some(renewed) => iterator = renewed,
                    None => return self.finished(shard, state, unchecked).await,
                }
                continue;
            };
            if page.records.is_empty() {
                empty_pages += 1;
            }
            let first = page
                .records
                .iter()
                .find_map(|r| r.sequence_number.as_deref());
            if let (true, Some(first)) = (unchecked, first) {
                self.check_start(shard, Some(first)).await?;
                unchecked = false;
            }
            for record in page.records {
                self.hand_out(record, &mut state, out)?;
            }
            match page.next_shard_iterator {
                Some(next) => iterator = next,
                None => return self.finished(shard, state, unchecked).await,
            }
        }
    }

    /// The shard was read to its end; an owed shard that gave no record is checked first.
    async fn finished(
        &self,
        shard: &ShardInfo,
        mut state: ShardCheckpoint,
        unchecked: bool,
    ) -> Result<ShardCheckpoint, StreamsError> {
        if unchecked {
            self.check_start(shard, None).await?;
        }
        state.finished = true;
        Ok(state)
    }

    /// An owed shard read from `TRIM_HORIZON` begins at `first` (`None`: it gave no record):
    /// fails with [`StreamsError::ShardStartTrimmed`] when records before it were trimmed.
    ///
    /// No record is below the shard's `StartingSequenceNumber`, so a first record at the start
    /// proves nothing is missing. A later one (or none) may mean trimmed records, or a start
    /// that is only a lower bound of the first record's number; the service tells them apart:
    /// an iterator `AT_SEQUENCE_NUMBER` of the start is refused with
    /// `TrimmedDataAccessException` exactly when the start is older than the trim horizon.
    async fn check_start(
        &self,
        shard: &ShardInfo,
        first: Option<&str>,
    ) -> Result<(), StreamsError> {
        let Some(start) = shard.starting_sequence_number.as_deref() else {
            // The service lists no start for a shard that had no record when it was listed:
            // nothing in it was old enough to be trimmed.
            tracing::debug!(shard_id = %shard.id, "owed shard has no starting sequence number: nothing to check");
            return Ok(());
        };
        if first.is_some_and(|first| sequence_order(first, start) != Ordering::Greater) {
            return Ok(());
        }
        match self.iterator_at(shard, Position::At(start)).await? {
            Ok(_) => Ok(()),
            Err(Trimmed) => Err(self.start_trimmed(&shard.id, Some(start), first)),
        }
    }

    /// Advances the checkpoint past `record`, and hands it out if it is an event.
    fn hand_out(
        &self,
        record: ChangeRecord,
        state: &mut ShardCheckpoint,
        out: &mut Vec<Envelope>,
    ) -> Result<(), DynamoDbError> {
        if let Some(seq) = record.sequence_number {
            state.last_sequence_number = Some(seq);
        }
        let Some(item) = record.new_image.filter(|_| !record.removed) else {
            return Ok(());
        };
        let head = HEAD_SEQ.to_string();
        if matches!(item.get(SEQ), Some(AttributeValue::N(n)) if *n == head) {
            return Ok(());
        }
        out.push(items::envelope(&self.table, &item)?);
        Ok(())
    }

    /// An iterator after the checkpoint, or at the trim horizon when there is none; `None` when
    /// a closed shard has nothing more to give.
    async fn shard_iterator(
        &self,
        shard: &ShardInfo,
        state: &ShardCheckpoint,
    ) -> Result<Option<String>, StreamsError> {
        let position = match state.last_sequence_number.as_deref() {
            Some(checkpoint) => Position::After(checkpoint),
            None => Position::TrimHorizon,
        };
        match (self.iterator_at(shard, position).await?, position) {
            (Ok(Some(iterator)), _) => Ok(Some(iterator)),
            (Ok(None), _) if shard.closed => Ok(None),
            (Ok(None), _) => Err(DynamoDbError::Service {
                operation: "GetShardIterator",
                code: "NoIterator".into(),
                message: format!("no iterator for the open shard {}", shard.id),
            }
            .into()),
            (Err(Trimmed), Position::After(checkpoint)) => Err(self.trimmed(&shard.id, checkpoint)),
            (Err(Trimmed), _) => Err(DynamoDbError::Service {
                operation: "GetShardIterator",
                code: "TrimmedDataAccessException".into(),
                message: format!("shard {} is trimmed at its own trim horizon", shard.id),
            }
            .into()),
        }
    }

    /// `GetShardIterator` at `position`, with retries; `Err(Trimmed)` when the position is older
    /// than the shard's trim horizon.
    async fn iterator_at(
        &self,
        shard: &ShardInfo,
        position: Position<'_>,
    ) -> Result<Result<Option<String>, Trimmed>, DynamoDbError> {
        retrying(&self.retry, "GetShardIterator", |_| async move {
            match self
                .api
                .get_shard_iterator(&self.stream_arn, &shard.id, position)
                .await
            {
                Ok(iterator) => Ok(Ok(iterator)),
                Err(CallError::TrimmedData) => Ok(Err(Trimmed)),
                Err(e) => Err(unexpected("GetShardIterator", e)),
            }
        })
        .await
    }

    /// One page from `iterator`; `None` when the iterator expired or points at trimmed records.
    async fn records(
        &self,
        iterator: &str,
        limit: usize,
    ) -> Result<Option<RecordsPage>, DynamoDbError> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        retrying(&self.retry, "GetRecords", |_| async move {
            match self.api.get_records(iterator, limit).await {
                Ok(page) => Ok(Some(page)),
                Err(CallError::ExpiredIterator | CallError::TrimmedData) => Ok(None),
                Err(CallError::Failed(failure)) => Err(failure),
            }
        })
        .await
    }

    fn trimmed(&self, shard_id: &str, checkpoint: &str) -> StreamsError {
        tracing::error!(
            stream_arn = %self.stream_arn,
            shard_id,
            checkpoint,
            "stream checkpoint is older than the stream's retention: records were lost to the \
             feed; rebuild the read model from the journal"
        );
        StreamsError::CheckpointTrimmed {
            stream_arn: self.stream_arn.clone(),
            shard_id: shard_id.to_owned(),
            checkpoint: checkpoint.to_owned(),
        }
    }

    fn start_trimmed(
        &self,
        shard_id: &str,
        starting_sequence_number: Option<&str>,
        oldest_left: Option<&str>,
    ) -> StreamsError {
        tracing::error!(
            stream_arn = %self.stream_arn,
            shard_id,
            starting_sequence_number,
            oldest_left,
            "records of a stream shard owed from its start were trimmed before they were read: \
             records were lost to the feed; rebuild the read model from the journal"
        );
        StreamsError::ShardStartTrimmed {
            stream_arn: self.stream_arn.clone(),
            shard_id: shard_id.to_owned(),
            starting_sequence_number: starting_sequence_number.map(str::to_owned),
            oldest_left: oldest_left.map(str::to_owned),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, HashMap<String, KeptIterator>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The iterator kept for this shard, if it was kept at exactly this checkpoint.
    fn take_kept(&self, shard_id: &str, state: &ShardCheckpoint) -> Option<String> {
        let kept = self.kept().remove(shard_id)?;
        (kept.after == state.last_sequence_number).then_some(kept.iterator)
    }

    fn keep(&self, shard_id: &str, state: &ShardCheckpoint, iterator: String) {
        let kept = KeptIterator {
            after: state.last_sequence_number.clone(),
            iterator,
        };
        self.kept().insert(shard_id.to_owned(), kept);
    }
}

/// The position asked for is older than the shard's trim horizon.
struct Trimmed;

/// A call error the operation does not handle itself, for the retry loop.
fn unexpected(operation: &'static str, e: CallError) -> Failure {
    match e {
        CallError::Failed(failure) => failure,
        other => Failure::Permanent(DynamoDbError::Service {
            operation,
            code: format!("{other:?}"),
            message: "unexpected answer".into(),
        }),
    }
}
