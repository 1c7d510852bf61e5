//! Fault injection for the read store: a wrapper around a real store that fails chosen calls,
//! at a chosen point of a commit, a chosen number of times in a row.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use kiroku_journal::StreamId;
use kiroku_read_model_updater::{
    Batch, Checkpoint, CommitOutcome, Cursor, DeadLetter, MessagePage, MessageView, ProjectedEvent,
    ProjectionState, ReadStore, RoomSummary, StoreError, ViewsDump,
};
use parking_lot::Mutex;

/// Where a commit fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitFault {
    /// Refused before anything is written (no connection to be had).
    Before,
    /// The transaction does the batch's writes, then fails and rolls back (the connection
    /// dropped mid-commit).
    During,
    /// Written and committed, but the caller gets an error: the outcome is unknown to it (the
    /// acknowledgement was lost).
    After,
}

/// How `state` (the first store call of every updater step) fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFault {
    /// A failure that is not transient (e.g. a schema this binary does not know).
    Permanent,
    /// A bug.
    Panic,
}

pub struct FaultyStore {
    inner: Arc<dyn ReadStore>,
    commits: Mutex<VecDeque<CommitFault>>,
    states: Mutex<VecDeque<StateFault>>,
    injected: AtomicU64,
    passed: AtomicU64,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ReadStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            commits: Mutex::default(),
            states: Mutex::default(),
            injected: AtomicU64::new(0),
            passed: AtomicU64::new(0),
        })
    }

    /// The next `times` commits fail at `fault`.
    pub fn fail_commits(&self, fault: CommitFault, times: usize) {
        self.commits
            .lock()
            .extend(std::iter::repeat_n(fault, times));
    }

    /// The next `times` calls of `state` fail with `fault`.
    pub fn fail_states(&self, fault: StateFault, times: usize) {
        self.states.lock().extend(std::iter::repeat_n(fault, times));
    }

    /// Faults still armed.
    pub fn armed(&self) -> usize {
        self.commits.lock().len() + self.states.lock().len()
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// Commits that went through unharmed.
    pub fn passed(&self) -> u64 {
        self.passed.load(Ordering::SeqCst)
    }

    fn injected_error(&self, what: &str) -> StoreError {
        self.injected.fetch_add(1, Ordering::SeqCst);
        StoreError::Unavailable(format!("injected: {what}"))
    }
}

/// An event that makes any commit fail after all the batch's other writes: its aggregate has
/// nothing applied, so sequence 2 is a gap and the store rolls the transaction back.
fn poison_pill(batch: &Batch) -> ProjectedEvent {
    let mut envelope =
        kiroku_read_model_updater::suite::envelope("zz-fault-injection", 2, batch.position.max(1));
    envelope.event_type = "fault".into();
    ProjectedEvent {
        envelope,
        result: Ok(Vec::new()),
    }
}

#[async_trait]
impl ReadStore for FaultyStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await
    }

    async fn state(&self, projection: &str) -> Result<ProjectionState, StoreError> {
        let fault = self.states.lock().pop_front();
        match fault {
            None => self.inner.state(projection).await,
            Some(StateFault::Permanent) => {
                self.injected.fetch_add(1, Ordering::SeqCst);
                Err(StoreError::Storage(
                    "injected: relation \"projections\" has no column \"active_version\"".into(),
                ))
            }
            Some(StateFault::Panic) => {
                self.injected.fetch_add(1, Ordering::SeqCst);
                panic!("injected: a bug in the read store")
            }
        }
    }

    async fn checkpoint(&self, projection: &str, version: u32) -> Result<Checkpoint, StoreError> {
        self.inner.checkpoint(projection, version).await
    }

    async fn applied_sequences(
        &self,
        projection: &str,
        version: u32,
        streams: &[StreamId],
    ) -> Result<HashMap<StreamId, u64>, StoreError> {
        self.inner
            .applied_sequences(projection, version, streams)
            .await
    }

    async fn commit(&self, mut batch: Batch) -> Result<CommitOutcome, StoreError> {
        let fault = self.commits.lock().pop_front();
        match fault {
            None => {
                let outcome = self.inner.commit(batch).await?;
                self.passed.fetch_add(1, Ordering::SeqCst);
                Ok(outcome)
            }
            Some(CommitFault::Before) => Err(self.injected_error("no connection before commit")),
            Some(CommitFault::During) => {
                let pill = poison_pill(&batch);
                batch.events.push(pill);
                match self.inner.commit(batch).await {
                    Err(StoreError::Gap { .. }) => {
                        Err(self.injected_error("connection lost during commit"))
                    }
                    other => panic!("the injected gap did not fail the commit: {other:?}"),
                }
            }
            Some(CommitFault::After) => {
                self.inner.commit(batch).await?;
                Err(self.injected_error("connection lost after commit"))
            }
        }
    }

    async fn begin_rebuild(&self, projection: &str) -> Result<u32, StoreError> {
        self.inner.begin_rebuild(projection).await
    }

    async fn finish_rebuild(&self, projection: &str, version: u32) -> Result<(), StoreError> {
        self.inner.finish_rebuild(projection, version).await
    }

    async fn dead_letters(
        &self,
        projection: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.dead_letters(projection, limit).await
    }

    async fn parked(
        &self,
        projection: &str,
        stream: &StreamId,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.parked(projection, stream).await
    }

    async fn resolve(
        &self,
        projection: &str,
        stream: &StreamId,
        applied: Vec<ProjectedEvent>,
    ) -> Result<(), StoreError> {
        self.inner.resolve(projection, stream, applied).await
    }

    async fn applied_sequence(
        &self,
        projection: &str,
        stream: &StreamId,
    ) -> Result<u64, StoreError> {
        self.inner.applied_sequence(projection, stream).await
    }

    async fn room(&self, room_id: &str) -> Result<Option<RoomSummary>, StoreError> {
        self.inner.room(room_id).await
    }

    async fn messages(
        &self,
        room_id: &str,
        before: Option<Cursor>,
        limit: usize,
    ) -> Result<MessagePage, StoreError> {
        self.inner.messages(room_id, before, limit).await
    }

    async fn member_rooms(
        &self,
        user_id: &str,
        limit: usize,
    ) -> Result<Vec<RoomSummary>, StoreError> {
        self.inner.member_rooms(user_id, limit).await
    }

    async fn message_changes(
        &self,
        room_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<MessageView>, StoreError> {
        self.inner.message_changes(room_id, after, limit).await
    }

    async fn room_changes(
        &self,
        room_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Option<(RoomSummary, Vec<MessageView>)>, StoreError> {
        self.inner.room_changes(room_id, after, limit).await
    }

    async fn dump(&self, projection: &str, version: u32) -> Result<ViewsDump, StoreError> {
        self.inner.dump(projection, version).await
    }
}
