//! Keeps a SQLite write-ahead log under a ceiling, for every SQLite file kiroku writes (the
//! journal and the embedded read store).
//!
//! SQLite only moves its WAL back to the start when a checkpoint has copied *every* frame into the
//! database file and no reader still uses the log. A `PASSIVE` checkpoint never waits, so under a
//! steady stream of commits it always trails the newest frame and the log grows for ever (1.8 GB
//! after 40 s at 3,000 commands/s). [`WalCeiling::after_commit`] runs on the writing connection
//! between two transactions: once the log passes half the ceiling it runs a `TRUNCATE`
//! checkpoint, which copies the few frames a background `PASSIVE` pass has not copied yet, waits
//! for readers to leave the log (they are short), and truncates the file to zero bytes. It holds
//! up the next write for that long only: milliseconds, because the bulk was copied without
//! blocking anybody. The ceiling is then exceeded only if one commit alone writes more than half of
//! it, or a reader holds a snapshot for longer than the busy timeout.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

/// The default ceiling of a WAL file: 64 MiB.
pub const DEFAULT_WAL_CEILING: u64 = 64 * 1024 * 1024;

/// How long a ceiling checkpoint waits for readers to leave the log before trying again later:
/// `CHECKPOINT_POLLS` looks, `CHECKPOINT_POLL` apart (50 ms in all).
const CHECKPOINT_POLL: std::time::Duration = std::time::Duration::from_micros(100);
const CHECKPOINT_POLLS: i32 = 500;

/// A busy handler: `true` (try again) for the first `CHECKPOINT_POLLS` calls.
fn wait_briefly(attempts: i32) -> bool {
    if attempts >= CHECKPOINT_POLLS {
        return false;
    }
    std::thread::sleep(CHECKPOINT_POLL);
    true
}

/// How large one SQLite file's WAL may grow.
#[derive(Debug, Clone)]
pub struct WalCeiling {
    wal: PathBuf,
    /// 0: no ceiling (only background `PASSIVE` checkpoints; kept to measure the difference).
    bytes: u64,
}

/// What a [`WalCeiling::after_commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpointed {
    /// The log is below the threshold; nothing done.
    NotNeeded,
    /// Every frame was copied and the log truncated.
    Truncated,
    /// A reader (or another writer) kept the log busy; tried again after the next commit.
    Busy,
}

impl WalCeiling {
    /// The ceiling for the database at `db` (its log is `db` + `-wal`); `bytes == 0` disables it.
    pub fn new(db: &Path, bytes: u64) -> Self {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        Self {
            wal: PathBuf::from(wal),
            bytes,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Size of the log file now (0 when there is none).
    pub fn wal_size(&self) -> u64 {
        std::fs::metadata(&self.wal).map_or(0, |m| m.len())
    }

    /// Sets the connection up so that a log that was reset is also shrunk back to the ceiling.
    pub fn configure(&self, conn: &Connection) -> rusqlite::Result<()> {
        if self.bytes > 0 {
            conn.pragma_update(None, "journal_size_limit", self.bytes as i64)?;
        }
        Ok(())
    }

    /// Call on the writing connection, outside a transaction, after each commit.
    pub fn after_commit(&self, conn: &Connection) -> rusqlite::Result<Checkpointed> {
        if self.bytes == 0 || self.wal_size() < self.bytes / 2 {
            return Ok(Checkpointed::NotNeeded);
        }
        let started = std::time::Instant::now();
        // Waiting for a reader holds up the next group of writes: give up quickly and try again
        // after the next commit rather than stall every writer behind a slow reader.
        let busy_timeout: i64 = conn.query_row("PRAGMA busy_timeout", [], |r| r.get(0))?;
        // SQLite's own busy handler sleeps in steps of up to 50 ms; readers hold the log for
        // about a millisecond, so poll finely instead: the writer waits only as long as they read.
        conn.busy_handler(Some(wait_briefly))?;
        let outcome = truncate(conn);
        conn.busy_timeout(std::time::Duration::from_millis(busy_timeout.max(0) as u64))?;
        let outcome = outcome?;
        tracing::debug!(
            wal = %self.wal.display(),
            ?outcome,
            wal_bytes = self.wal_size(),
            took_us = started.elapsed().as_micros() as u64,
            "wal checkpoint"
        );
        if outcome == Checkpointed::Busy && self.wal_size() > self.bytes {
            tracing::warn!(wal = %self.wal.display(), wal_bytes = self.wal_size(), ceiling = self.bytes, "wal over its ceiling: a reader holds the log; trying again after the next commit");
        }
        Ok(outcome)
    }
}

/// Copies every frame into the database and truncates the log to zero bytes (on clean shutdown,
/// and whenever the log passes half its ceiling).
pub fn truncate(conn: &Connection) -> rusqlite::Result<Checkpointed> {
    // The row is (busy, frames in the log, frames checkpointed); busy = 1 when it could not finish.
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
    Ok(if busy == 0 {
        Checkpointed::Truncated
    } else {
        Checkpointed::Busy
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAL database with one table and no automatic checkpoints (as the journal's writer).
    fn writer(db: &Path) -> Connection {
        let writer = Connection::open(db).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; \
                 CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB);",
            )
            .unwrap();
        writer
    }

    /// A reader that keeps a snapshot open while the writer commits; then lets go.
    #[test]
    fn the_log_stays_under_its_ceiling_while_a_reader_reads_between_commits() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let ceiling = WalCeiling::new(&db, 256 * 1024);
        let writer = writer(&db);
        ceiling.configure(&writer).unwrap();
        let reader = Connection::open(&db).unwrap();
        let mut largest = 0;
        let mut truncations = 0;
        for i in 0..2_000 {
            writer
                .execute("INSERT INTO t (v) VALUES (zeroblob(2000))", [])
                .unwrap();
            // A short read between commits, as the journal's readers do.
            let _: i64 = reader
                .query_row("SELECT count(*) FROM t WHERE k <= ?1", [i], |r| r.get(0))
                .unwrap();
            if ceiling.after_commit(&writer).unwrap() == Checkpointed::Truncated {
                truncations += 1;
            }
            largest = largest.max(ceiling.wal_size());
        }
        assert!(truncations > 0, "the log was never truncated");
        assert!(
            largest <= ceiling.bytes(),
            "the log reached {largest} bytes, over its ceiling of {}",
            ceiling.bytes()
        );
        let rows: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2_000, "checkpoints lose nothing");
    }

    /// A reader that holds its snapshot (a backup, a shell) keeps the log from being reset; the
    /// writer must not stall behind it, only try again after each commit until it lets go.
    #[test]
    fn a_reader_holding_the_log_delays_the_truncation_but_never_stalls_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let ceiling = WalCeiling::new(&db, 64 * 1024);
        let writer = writer(&db);
        writer
            .busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        let reader = Connection::open(&db).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        let mut slowest = std::time::Duration::ZERO;
        for _ in 0..100 {
            writer
                .execute("INSERT INTO t (v) VALUES (zeroblob(2000))", [])
                .unwrap();
            let started = std::time::Instant::now();
            let outcome = ceiling.after_commit(&writer).unwrap();
            slowest = slowest.max(started.elapsed());
            assert_ne!(
                outcome,
                Checkpointed::Truncated,
                "the reader still holds the log"
            );
        }
        assert!(
            slowest < std::time::Duration::from_secs(1),
            "a checkpoint held the writer for {slowest:?}"
        );
        let busy: i64 = writer
            .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
            .unwrap();
        assert_eq!(busy, 5000, "the writer's own busy timeout is restored");
        reader.execute_batch("COMMIT").unwrap();
        writer
            .execute("INSERT INTO t (v) VALUES (zeroblob(2000))", [])
            .unwrap();
        assert_eq!(
            ceiling.after_commit(&writer).unwrap(),
            Checkpointed::Truncated
        );
        assert_eq!(ceiling.wal_size(), 0);
    }

    #[test]
    fn without_a_ceiling_the_log_grows_while_commits_keep_coming() {
        // What happened before the ceiling existed: a log that is never reset.
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let ceiling = WalCeiling::new(&db, 0);
        let writer = writer(&db);
        for _ in 0..500 {
            writer
                .execute("INSERT INTO t (v) VALUES (zeroblob(2000))", [])
                .unwrap();
            assert_eq!(
                ceiling.after_commit(&writer).unwrap(),
                Checkpointed::NotNeeded
            );
        }
        assert!(ceiling.wal_size() > 256 * 1024);
        assert_eq!(truncate(&writer).unwrap(), Checkpointed::Truncated);
        assert_eq!(
            ceiling.wal_size(),
            0,
            "a truncating checkpoint empties the log"
        );
    }
}
