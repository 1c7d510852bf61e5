use async_trait::async_trait;

use crate::{
    AppendOutcome, AppendRequest, CommandRecord, Envelope, JournalError, SnapshotRecord, StreamId,
};

/// The journal port. Every method is atomic: it either happens whole or not at all.
#[async_trait]
pub trait Journal: Send + Sync + 'static {
    /// Appends a command's events with an expected-version check and records the command.
    ///
    /// * the stream is not at `expected_sequence` → [`JournalError::Conflict`], nothing written;
    /// * `(principal, command_id)` was decided before → [`AppendOutcome::Duplicate`] with the
    ///   original record, nothing written (checked before the version);
    /// * otherwise the events become `expected_sequence + 1 ..` and the outcome is `Appended`.
    ///
    /// When this returns `Ok` the write is durable.
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, JournalError>;

    /// Records a rejected command, decided on the stream at version `decided_at`.
    ///
    /// * `(principal, command_id)` was decided before → the original record, nothing written;
    /// * the stream is no longer at `decided_at` → [`JournalError::Conflict`], nothing written: the
    ///   rejection came from a stale view of the aggregate and must be decided again, never kept
    ///   as the command's final answer;
    /// * otherwise the rejection is recorded and returned.
    async fn record_rejection(
        &self,
        record: CommandRecord,
        decided_at: u64,
    ) -> Result<CommandRecord, JournalError>;

    async fn command_record(
        &self,
        principal: &str,
        command_id: &str,
    ) -> Result<Option<CommandRecord>, JournalError>;

    /// Events of `stream` with `from <= sequence <= to`, in order, at most `limit` of them.
    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, JournalError>;

    /// The highest sequence number ever appended to `stream` (0 for none); deleting events never
    /// lowers it.
    async fn highest_sequence(&self, stream: &StreamId) -> Result<u64, JournalError>;

    /// Whether [`Journal::read_all`] is available.
    fn has_global_order(&self) -> bool;

    /// Events of all streams with `global_position > after`, in commit order, at most `limit`.
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<Envelope>, JournalError>;

    /// The global position of the newest event, where the backend has a global order.
    async fn head_position(&self) -> Result<Option<u64>, JournalError> {
        Ok(None)
    }

    /// Permanently deletes the events of `stream` up to and including `to`.
    async fn delete_up_to(&self, stream: &StreamId, to: u64) -> Result<(), JournalError>;

    /// Stores a snapshot; older ones beyond the configured number to keep are dropped.
    async fn save_snapshot(&self, snapshot: SnapshotRecord) -> Result<(), JournalError>;

    /// The newest snapshot of `stream` at or below `max_sequence`.
    async fn latest_snapshot(
        &self,
        stream: &StreamId,
        max_sequence: u64,
    ) -> Result<Option<SnapshotRecord>, JournalError>;
}

/// Reads every event of `stream` from `from` on, page by page.
pub async fn read_whole_stream(
    journal: &dyn Journal,
    stream: &StreamId,
    from: u64,
    page: usize,
) -> Result<Vec<Envelope>, JournalError> {
    let mut out = Vec::new();
    let mut next = from.max(1);
    loop {
        let batch = journal.read_stream(stream, next, u64::MAX, page).await?;
        let done = batch.len() < page;
        if let Some(last) = batch.last() {
            next = last.sequence + 1;
        }
        out.extend(batch);
        if done {
            return Ok(out);
        }
    }
}
