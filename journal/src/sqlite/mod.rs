//! The embedded journal: one SQLite file in WAL mode.
//!
//! All writes go through one writer thread that owns the only writing connection. It takes every
//! request waiting in its queue (up to `max_batch`), runs them in one transaction and commits once
//! with `synchronous=FULL`, so a single fsync makes a whole group of appends durable; only then are
//! the callers answered (group commit). Reads run on a small pool of read-only connections on
//! tokio's blocking pool; WAL lets them proceed while the writer commits.

mod reader;
mod schema;
pub mod wal;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    AppendOutcome, AppendRequest, CommandRecord, Envelope, Journal, JournalError, SnapshotRecord,
    StreamId,
};
use reader::ReaderPool;
use writer::{WriteOp, Writer};

#[derive(Debug, Clone)]
pub struct SqliteJournalOptions {
    /// Let concurrent writes share one transaction and fsync. Off only to measure its effect.
    pub group_commit: bool,
    /// The most write requests one transaction takes.
    pub max_batch: usize,
    /// Snapshots kept per stream (the newest ones).
    pub snapshots_to_keep: usize,
    /// Write requests that may wait for the writer before callers are held back.
    pub queue_capacity: usize,
    /// Longest a group waits for more writers when recent groups were large (commit delay).
    pub max_linger: std::time::Duration,
    /// The WAL file is checkpointed and truncated before it passes this many bytes (see
    /// [`wal::WalCeiling`]); 0 leaves it unbounded (only to measure the difference).
    pub wal_ceiling: u64,
}

impl Default for SqliteJournalOptions {
    fn default() -> Self {
        Self {
            group_commit: true,
            max_batch: 1024,
            snapshots_to_keep: 1,
            queue_capacity: 16 * 1024,
            max_linger: std::time::Duration::from_micros(500),
            wal_ceiling: wal::DEFAULT_WAL_CEILING,
        }
    }
}

/// The embedded SQLite journal. Cheap to clone: clones share the writer and the readers.
#[derive(Clone)]
pub struct SqliteJournal {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writes: mpsc::Sender<WriteOp>,
    readers: ReaderPool,
    committed: watch::Receiver<u64>,
}

impl SqliteJournal {
    /// Opens (creating if needed) the journal file at `path` and migrates its schema.
    pub fn open(
        path: impl AsRef<Path>,
        options: SqliteJournalOptions,
    ) -> Result<Self, JournalError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                JournalError::Storage(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let conn = schema::open_writer(&path)?;
        let last_position = conn
            .query_row("SELECT max(global_position) FROM events", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .map_err(storage)?
            .unwrap_or(0) as u64;
        let (writes, queue) = mpsc::channel(options.queue_capacity);
        let (committed_tx, committed) = watch::channel(last_position);
        schema::spawn_checkpointer(&path, committed.clone())?;
        let wal = wal::WalCeiling::new(&path, options.wal_ceiling);
        Writer::spawn(conn, queue, committed_tx, options, wal)?;
        Ok(Self {
            inner: Arc::new(Inner {
                readers: ReaderPool::new(path.clone()),
                path,
                writes,
                committed,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Follows the global position of the newest committed event: the feed waits on this instead
    /// of polling.
    pub fn committed_position(&self) -> watch::Receiver<u64> {
        self.inner.committed.clone()
    }

    /// Copies every WAL frame into the database file and truncates the WAL to zero bytes, after
    /// the writes queued before it. For a clean shutdown: the file left behind is the whole journal.
    pub async fn truncate_wal(&self) -> Result<(), JournalError> {
        self.write(WriteOp::TruncateWal).await
    }

    async fn write<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, JournalError>>) -> WriteOp,
    ) -> Result<T, JournalError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .writes
            .send(op(tx))
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }
}

pub(crate) fn storage(e: rusqlite::Error) -> JournalError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            JournalError::Unavailable(e.to_string())
        }
        e => JournalError::Storage(e.to_string()),
    }
}

/// SQLite integers are signed; sequence numbers and positions never reach 2^63.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[async_trait]
impl Journal for SqliteJournal {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, JournalError> {
        self.write(|reply| WriteOp::Append(request, reply)).await
    }

    async fn record_rejection(
        &self,
        record: CommandRecord,
        decided_at: u64,
    ) -> Result<CommandRecord, JournalError> {
        self.write(|reply| WriteOp::RecordRejection(record, decided_at, reply))
            .await
    }

    async fn command_record(
        &self,
        principal: &str,
        command_id: &str,
    ) -> Result<Option<CommandRecord>, JournalError> {
        let (principal, command_id) = (principal.to_owned(), command_id.to_owned());
        self.inner
            .readers
            .run(move |c| schema::command_record(c, &principal, &command_id))
            .await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, JournalError> {
        let stream = stream.clone();
        self.inner
            .readers
            .run(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {} FROM events WHERE aggregate_type = ?1 AND aggregate_id = ?2 \
                     AND sequence BETWEEN ?3 AND ?4 ORDER BY sequence LIMIT ?5",
                    schema::ENVELOPE_COLUMNS
                ))?;
                let rows = stmt.query_map(
                    params![
                        stream.aggregate_type,
                        stream.aggregate_id,
                        to_i64(from),
                        to_i64(to),
                        to_i64(limit as u64)
                    ],
                    schema::envelope,
                )?;
                rows.collect()
            })
            .await
    }

    async fn highest_sequence(&self, stream: &StreamId) -> Result<u64, JournalError> {
        let stream = stream.clone();
        self.inner
            .readers
            .run(move |c| schema::highest_sequence(c, &stream))
            .await
    }

    fn has_global_order(&self) -> bool {
        true
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<Envelope>, JournalError> {
        self.inner
            .readers
            .run(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {} FROM events WHERE global_position > ?1 ORDER BY global_position LIMIT ?2",
                    schema::ENVELOPE_COLUMNS
                ))?;
                let rows = stmt.query_map(params![to_i64(after), to_i64(limit as u64)], schema::envelope)?;
                rows.collect()
            })
            .await
    }

    async fn head_position(&self) -> Result<Option<u64>, JournalError> {
        self.inner
            .readers
            .run(|c| {
                c.prepare_cached("SELECT max(global_position) FROM events")?
                    .query_row([], |r| r.get::<_, Option<i64>>(0))
                    .map(|p| Some(p.unwrap_or(0) as u64))
            })
            .await
    }

    async fn delete_up_to(&self, stream: &StreamId, to: u64) -> Result<(), JournalError> {
        let stream = stream.clone();
        self.write(|reply| WriteOp::DeleteUpTo(stream, to, reply))
            .await
    }

    async fn save_snapshot(&self, snapshot: SnapshotRecord) -> Result<(), JournalError> {
        self.write(|reply| WriteOp::SaveSnapshot(snapshot, reply))
            .await
    }

    async fn latest_snapshot(
        &self,
        stream: &StreamId,
        max_sequence: u64,
    ) -> Result<Option<SnapshotRecord>, JournalError> {
        let stream = stream.clone();
        self.inner
            .readers
            .run(move |c| {
                c.prepare_cached(
                    "SELECT sequence, timestamp_ms, state FROM snapshots WHERE aggregate_type = ?1 \
                     AND aggregate_id = ?2 AND sequence <= ?3 ORDER BY sequence DESC LIMIT 1",
                )?
                .query_row(
                    params![
                        stream.aggregate_type,
                        stream.aggregate_id,
                        to_i64(max_sequence)
                    ],
                    |r| {
                        Ok(SnapshotRecord {
                            stream: stream.clone(),
                            sequence: r.get::<_, i64>(0)? as u64,
                            timestamp_ms: r.get(1)?,
                            state: r.get(2)?,
                        })
                    },
                )
                .optional()
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fresh() -> (Arc<dyn Journal>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(
            dir.path().join("journal.db"),
            SqliteJournalOptions::default(),
        )
        .unwrap();
        (Arc::new(journal), dir)
    }

    crate::journal_conformance_suite!(fresh());

    mod without_group_commit {
        use super::*;
        async fn fresh() -> (Arc<dyn Journal>, tempfile::TempDir) {
            let dir = tempfile::tempdir().unwrap();
            let options = SqliteJournalOptions {
                group_commit: false,
                ..Default::default()
            };
            let journal = SqliteJournal::open(dir.path().join("journal.db"), options).unwrap();
            (Arc::new(journal), dir)
        }
        crate::journal_conformance_suite!(fresh());
    }

    /// The WAL bound under load: 32 appenders and a tailing reader, sampled every millisecond.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_under_its_ceiling_under_sustained_appends_and_is_empty_after_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        let ceiling = 2 * 1024 * 1024;
        let options = SqliteJournalOptions {
            wal_ceiling: ceiling,
            ..Default::default()
        };
        let journal = SqliteJournal::open(&path, options).unwrap();
        let wal = wal::WalCeiling::new(&path, ceiling);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let (wal, done) = (wal.clone(), done.clone());
            std::thread::spawn(move || {
                let mut largest = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    largest = largest.max(wal.wal_size());
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                largest
            })
        };
        let tail = {
            let (journal, done) = (journal.clone(), done.clone());
            tokio::spawn(async move {
                let mut after = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let page = journal.read_all(after, 500).await.unwrap();
                    after = page.last().map_or(after, |e| e.global_position);
                }
            })
        };
        let writers: Vec<_> = (0..32)
            .map(|w| {
                let journal = journal.clone();
                tokio::spawn(async move {
                    let stream = StreamId::new("room", format!("w{w}"));
                    for seq in 0..150 {
                        let mut request =
                            crate::conformance::request(&stream, seq, 1, &format!("w{w}-{seq}"));
                        request.events[0].payload = vec![7; 400];
                        journal.append(request).await.unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let largest = sampler.join().unwrap();
        tail.await.unwrap();
        assert!(
            largest <= ceiling,
            "the WAL reached {largest} bytes, over its ceiling of {ceiling}"
        );
        assert_eq!(journal.head_position().await.unwrap(), Some(32 * 150));
        journal.truncate_wal().await.unwrap();
        assert_eq!(wal.wal_size(), 0, "a clean shutdown leaves an empty WAL");
        assert_eq!(
            journal.read_all(0, 10_000).await.unwrap().len(),
            32 * 150,
            "nothing is lost by checkpoints"
        );
    }

    #[tokio::test]
    async fn reopening_keeps_everything_and_the_committed_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        let stream = StreamId::new("room", "r1");
        {
            let journal = SqliteJournal::open(&path, SqliteJournalOptions::default()).unwrap();
            let mut watch = journal.committed_position();
            journal
                .append(crate::conformance::request(&stream, 0, 3, "c1"))
                .await
                .unwrap();
            watch.wait_for(|p| *p >= 3).await.unwrap();
        }
        let journal = SqliteJournal::open(&path, SqliteJournalOptions::default()).unwrap();
        assert_eq!(*journal.committed_position().borrow(), 3);
        assert_eq!(journal.highest_sequence(&stream).await.unwrap(), 3);
        let again = journal
            .append(crate::conformance::request(&stream, 3, 1, "c1"))
            .await
            .unwrap();
        assert!(
            matches!(again, AppendOutcome::Duplicate(_)),
            "command ids survive a reopen"
        );
    }
}
