//! Consistency waits against a real SQLite journal and read store: beside an updater they read
//! the store when it commits, not on a timer; elsewhere they poll it gently; an updater that
//! stopped never makes them spin. A wrapper counts the store reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use kiroku_chat::{Room, RoomEvent};
use kiroku_core::Aggregate;
use kiroku_journal::{
    AppendRequest, EventMetadata, Journal, NewEvent, SqliteJournal, SqliteJournalOptions, StreamId,
};
use kiroku_read_model_updater::{
    Batch, Checkpoint, CommitOutcome, Consistency, ConsistencyWaiter, Cursor, DeadLetter,
    JournalFeed, MessagePage, MessageView, Progress, ProjectedEvent, ProjectionState, ROOMS,
    ReadStore, RoomSummary, RoomsProjection, SqliteReadStore, StoreError, Updater, UpdaterConfig,
    ViewsDump,
};
use tokio::sync::{oneshot, watch};

/// The real store, counting how often a wait asks it for an applied version.
struct Counting {
    inner: SqliteReadStore,
    applied_reads: AtomicU64,
}

#[async_trait]
impl ReadStore for Counting {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await
    }
    async fn state(&self, p: &str) -> Result<ProjectionState, StoreError> {
        self.inner.state(p).await
    }
    async fn checkpoint(&self, p: &str, v: u32) -> Result<Checkpoint, StoreError> {
        self.inner.checkpoint(p, v).await
    }
    async fn applied_sequences(
        &self,
        p: &str,
        v: u32,
        s: &[StreamId],
    ) -> Result<HashMap<StreamId, u64>, StoreError> {
        self.inner.applied_sequences(p, v, s).await
    }
    async fn commit(&self, b: Batch) -> Result<CommitOutcome, StoreError> {
        self.inner.commit(b).await
    }
    async fn begin_rebuild(&self, p: &str) -> Result<u32, StoreError> {
        self.inner.begin_rebuild(p).await
    }
    async fn finish_rebuild(&self, p: &str, v: u32) -> Result<(), StoreError> {
        self.inner.finish_rebuild(p, v).await
    }
    async fn dead_letters(&self, p: &str, l: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.dead_letters(p, l).await
    }
    async fn parked(&self, p: &str, s: &StreamId) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.parked(p, s).await
    }
    async fn resolve(
        &self,
        p: &str,
        s: &StreamId,
        a: Vec<ProjectedEvent>,
    ) -> Result<(), StoreError> {
        self.inner.resolve(p, s, a).await
    }
    async fn applied_sequence(&self, p: &str, s: &StreamId) -> Result<u64, StoreError> {
        self.applied_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.applied_sequence(p, s).await
    }
    async fn room(&self, r: &str) -> Result<Option<RoomSummary>, StoreError> {
        self.inner.room(r).await
    }
    async fn messages(
        &self,
        r: &str,
        b: Option<Cursor>,
        l: usize,
    ) -> Result<MessagePage, StoreError> {
        self.inner.messages(r, b, l).await
    }
    async fn member_rooms(&self, u: &str, l: usize) -> Result<Vec<RoomSummary>, StoreError> {
        self.inner.member_rooms(u, l).await
    }
    async fn message_changes(
        &self,
        r: &str,
        a: u64,
        l: usize,
    ) -> Result<Vec<MessageView>, StoreError> {
        self.inner.message_changes(r, a, l).await
    }
    async fn room_changes(
        &self,
        r: &str,
        a: u64,
        l: usize,
    ) -> Result<Option<(RoomSummary, Vec<MessageView>)>, StoreError> {
        self.inner.room_changes(r, a, l).await
    }
    async fn dump(&self, p: &str, v: u32) -> Result<ViewsDump, StoreError> {
        self.inner.dump(p, v).await
    }
}

struct World {
    _dir: tempfile::TempDir,
    journal: SqliteJournal,
    store: Arc<Counting>,
}

impl World {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(
            dir.path().join("journal.db"),
            SqliteJournalOptions::default(),
        )
        .unwrap();
        let inner = SqliteReadStore::open(dir.path().join("views.db")).unwrap();
        inner.migrate().await.unwrap();
        let store = Arc::new(Counting {
            inner,
            applied_reads: AtomicU64::new(0),
        });
        Self {
            _dir: dir,
            journal,
            store,
        }
    }

    /// A running updater (until the sender is dropped) and its published progress.
    fn spawn_updater(&self) -> (watch::Receiver<Progress>, oneshot::Sender<()>) {
        let port: Arc<dyn Journal> = Arc::new(self.journal.clone());
        let feed = JournalFeed::new(port.clone(), Some(self.journal.committed_position()));
        let mut updater = Updater::new(
            self.store.clone(),
            port,
            Arc::new(feed),
            Arc::new(RoomsProjection),
            UpdaterConfig::default(),
        );
        let progress = updater.progress();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = updater
                .run(async {
                    let _ = stopped.await;
                })
                .await;
        });
        (progress, stop)
    }

    fn waiter(&self, commits: Option<watch::Receiver<Progress>>) -> ConsistencyWaiter {
        ConsistencyWaiter::new(self.store.clone(), ROOMS, commits)
    }

    /// Appends one event to room `r1` at `expected` (0 creates it).
    async fn append(&self, expected: u64) {
        let event = if expected == 0 {
            RoomEvent::Created {
                name: "r1".into(),
                owner: "ann".into(),
            }
        } else {
            RoomEvent::MessagePosted {
                message_id: format!("m{expected}"),
                author: "ann".into(),
                body: "hello".into(),
            }
        };
        let enc = Room::encode(&event);
        self.journal
            .append(AppendRequest {
                stream: stream(),
                expected_sequence: expected,
                events: vec![NewEvent {
                    event_type: enc.event_type,
                    schema_version: enc.schema_version,
                    payload: enc.payload,
                }],
                metadata: EventMetadata {
                    command_id: format!("c{expected}"),
                    correlation_id: "test".into(),
                    causation_id: String::new(),
                    principal: "ann".into(),
                    timestamp_ms: 1_700_000_000_000,
                },
            })
            .await
            .unwrap();
    }

    fn reads(&self) -> u64 {
        self.store.applied_reads.load(Ordering::SeqCst)
    }
}

fn stream() -> StreamId {
    StreamId::new("room", "r1")
}

#[tokio::test]
async fn a_wait_beside_the_updater_reads_the_store_when_it_commits_not_on_a_timer() {
    let w = World::new().await;
    let (progress, _stop) = w.spawn_updater();
    let waiter = w.waiter(Some(progress));
    w.append(0).await;
    let first = waiter
        .wait_for(&stream(), 1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(first, Consistency::Reached { applied: 1 });

    let before = w.reads();
    let wait = tokio::spawn({
        let waiter = waiter.clone();
        async move {
            waiter
                .wait_for(&stream(), 3, Duration::from_secs(10))
                .await
                .unwrap()
        }
    });
    // Nothing is committed for a while: the wait reads the store once, then sleeps (a 10 ms
    // poll would read it about 60 times).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let quiet = w.reads() - before;
    assert!(quiet <= 2, "{quiet} reads while nothing was committed");
    // Each commit wakes it; the second reaches the version.
    w.append(1).await;
    w.append(2).await;
    let reached = tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("the commit wakes the wait")
        .unwrap();
    assert_eq!(reached, Consistency::Reached { applied: 3 });
    let total = w.reads() - before;
    assert!(total <= quiet + 3, "{total} reads for two commits");
}

#[tokio::test]
async fn a_wait_without_an_updater_here_sees_another_writer_commit_and_polls_gently() {
    let w = World::new().await;
    // The updater's progress does not reach this waiter, as in a read API beside an updater in
    // another process.
    let (_progress, _stop) = w.spawn_updater();
    let waiter = w.waiter(None);
    w.append(0).await;
    let before = w.reads();
    let late = waiter
        .wait_for(&stream(), 2, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(late, Consistency::NotYet { applied: 1 });
    let polled = w.reads() - before;
    // 50 ms apart: about 10 reads in 500 ms (a 10 ms poll makes about 50).
    assert!(polled <= 13, "{polled} reads in 500 ms");
    w.append(1).await;
    let reached = waiter
        .wait_for(&stream(), 2, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(reached, Consistency::Reached { applied: 2 });
}

#[tokio::test]
async fn a_wait_whose_updater_went_away_polls_instead_of_spinning() {
    let w = World::new().await;
    let (tx, rx) = watch::channel(Progress::default());
    drop(tx); // the updater stopped (or is being restarted under a new channel)
    let waiter = w.waiter(Some(rx));
    let late = waiter
        .wait_for(&stream(), 1, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(late, Consistency::NotYet { applied: 0 });
    let reads = w.reads();
    assert!(reads <= 9, "{reads} reads in 300 ms");
}
