//! The single writer thread and its group commit.

use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot, watch};

use super::wal::{self, WalCeiling};
use super::{SqliteJournalOptions, schema, storage, to_i64};
use crate::{
    AppendOutcome, AppendRequest, CommandOutcome, CommandRecord, JournalError, SnapshotRecord,
    StreamId,
};

type Reply<T> = oneshot::Sender<Result<T, JournalError>>;

pub(super) enum WriteOp {
    Append(AppendRequest, Reply<AppendOutcome>),
    RecordRejection(CommandRecord, u64, Reply<CommandRecord>),
    DeleteUpTo(StreamId, u64, Reply<()>),
    SaveSnapshot(SnapshotRecord, Reply<()>),
    /// Checkpoint every frame and truncate the WAL (clean shutdown).
    TruncateWal(Reply<()>),
}

impl WriteOp {
    /// An op left out of a failed group: its reply carries the group's error.
    fn unreached(self) -> Decided {
        let closed = JournalError::Closed;
        match self {
            WriteOp::Append(_, to) => Decided::Append(to, Err(closed)),
            WriteOp::RecordRejection(_, _, to) => Decided::Record(to, Err(closed)),
            WriteOp::DeleteUpTo(_, _, to)
            | WriteOp::SaveSnapshot(_, to)
            | WriteOp::TruncateWal(to) => Decided::Unit(to, Err(closed)),
        }
    }
}

/// What an op decided inside the transaction; sent to its caller only once the commit is durable.
enum Decided {
    Append(Reply<AppendOutcome>, Result<AppendOutcome, JournalError>),
    Record(Reply<CommandRecord>, Result<CommandRecord, JournalError>),
    Unit(Reply<()>, Result<(), JournalError>),
}

impl Decided {
    fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            Decided::Append(_, Err(JournalError::Storage(_)))
                | Decided::Record(_, Err(JournalError::Storage(_)))
                | Decided::Unit(_, Err(JournalError::Storage(_)))
        )
    }

    fn send(self, commit: &Result<(), JournalError>) {
        fn reply<T>(
            to: Reply<T>,
            result: Result<T, JournalError>,
            commit: &Result<(), JournalError>,
        ) {
            // A caller that gave up waiting is not an error: its write stands or falls with the batch.
            let _ = to.send(commit.clone().and(result));
        }
        match self {
            Decided::Append(to, r) => reply(to, r, commit),
            Decided::Record(to, r) => reply(to, r, commit),
            Decided::Unit(to, r) => reply(to, r, commit),
        }
    }
}

pub(super) struct Writer {
    conn: Connection,
    options: SqliteJournalOptions,
    committed: watch::Sender<u64>,
    wal: WalCeiling,
    /// Whether this process has written anything (its WAL is then its to truncate at close).
    wrote: bool,
}

impl Writer {
    pub fn spawn(
        conn: Connection,
        queue: mpsc::Receiver<WriteOp>,
        committed: watch::Sender<u64>,
        options: SqliteJournalOptions,
        wal: WalCeiling,
    ) -> Result<(), JournalError> {
        wal.configure(&conn).map_err(storage)?;
        let writer = Writer {
            conn,
            options,
            committed,
            wal,
            wrote: false,
        };
        std::thread::Builder::new()
            .name("kiroku-journal-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| JournalError::Storage(format!("cannot start the journal writer: {e}")))?;
        Ok(())
    }

    /// Runs until every sender is gone, then returns (closing the connection cleanly).
    fn run(mut self, mut queue: mpsc::Receiver<WriteOp>) {
        let max = if self.options.group_commit {
            self.options.max_batch.max(1)
        } else {
            1
        };
        let mut batch = Vec::with_capacity(max);
        // Smoothed size of recent groups: how many writers are typically waiting.
        let mut typical = 1.0_f64;
        while let Some(first) = queue.blocking_recv() {
            batch.push(first);
            drain(&mut queue, &mut batch, max);
            // Right after a group commit its writers come back one by one; committing the first
            // alone would cost a whole fsync for one append and keep the groups small. When recent
            // groups were large, wait a moment (bounded) for most of them. A lone writer
            // (typical ≈ 1) never waits.
            let want = ((typical * 0.75) as usize).min(max);
            if want > batch.len() && self.options.max_linger > Duration::ZERO {
                let deadline = Instant::now() + self.options.max_linger;
                while batch.len() < want && Instant::now() < deadline {
                    std::thread::sleep(LINGER_STEP);
                    drain(&mut queue, &mut batch, max);
                }
            }
            typical = 0.8 * typical + 0.2 * batch.len() as f64;
            self.commit_batch(&mut batch);
            // Between groups, with every caller of the last one answered: keep the WAL bounded.
            if let Err(e) = self.wal.after_commit(&self.conn) {
                tracing::warn!(error = %e, "journal wal checkpoint failed; trying again after the next commit");
            }
        }
        // A process that only read (a standalone updater) leaves the WAL to the one that writes.
        if self.wrote
            && let Err(e) = self.truncate_wal()
        {
            tracing::warn!(error = %e, "journal wal not truncated at close");
        }
        tracing::debug!("journal writer stopped");
    }

    fn truncate_wal(&self) -> Result<(), JournalError> {
        match wal::truncate(&self.conn).map_err(storage)? {
            wal::Checkpointed::Truncated => Ok(()),
            outcome => Err(JournalError::Unavailable(format!(
                "the journal's WAL was not truncated ({outcome:?}): a reader or another writer holds it"
            ))),
        }
    }

    fn commit_batch(&mut self, batch: &mut Vec<WriteOp>) {
        let size = batch.len();
        let started = std::time::Instant::now();
        let mut sql_done = started;
        let mut decided = Vec::with_capacity(size);
        let mut last_position = None;
        let mut truncate_after = None;
        let commit = (|| {
            // IMMEDIATE: take the write lock first (waiting up to the busy timeout), so another
            // process writing the same file makes this group wait, never fail on a stale snapshot.
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(storage)?;
            for op in batch.drain(..) {
                decided.push(match op {
                    WriteOp::TruncateWal(to) => {
                        // Answered after this group's commit, below.
                        truncate_after = Some(to);
                        continue;
                    }
                    WriteOp::Append(req, to) => {
                        let r = append(&tx, &req, &mut last_position);
                        Decided::Append(to, r)
                    }
                    WriteOp::RecordRejection(rec, decided_at, to) => {
                        Decided::Record(to, record_rejection(&tx, rec, decided_at))
                    }
                    WriteOp::DeleteUpTo(stream, upto, to) => {
                        Decided::Unit(to, delete_up_to(&tx, &stream, upto))
                    }
                    WriteOp::SaveSnapshot(snap, to) => Decided::Unit(
                        to,
                        save_snapshot(&tx, &snap, self.options.snapshots_to_keep),
                    ),
                });
                // A storage error inside the transaction poisons it: fail the whole batch.
                if decided.last().is_some_and(Decided::is_storage_failure) {
                    return Err(JournalError::Storage(
                        "a write in this group failed; the group was rolled back".into(),
                    ));
                }
            }
            sql_done = std::time::Instant::now();
            tx.commit().map_err(storage)
        })();
        tracing::trace!(
            size,
            sql_us = sql_done.duration_since(started).as_micros() as u64,
            commit_us = sql_done.elapsed().as_micros() as u64,
            "group committed"
        );
        if let Err(e) = &commit {
            // Ops never reached (the closure returned early) are answered with the same error.
            decided.extend(batch.drain(..).map(WriteOp::unreached));
            tracing::error!(error = %e, size, "journal group commit failed");
        } else {
            self.wrote |= size > usize::from(truncate_after.is_some());
            if let Some(p) = last_position {
                self.committed.send_replace(p);
            }
        }
        for d in decided {
            d.send(&commit);
        }
        if let Some(to) = truncate_after {
            let _ = to.send(commit.and_then(|()| self.truncate_wal()));
        }
    }
}

const LINGER_STEP: Duration = Duration::from_micros(50);

fn drain(queue: &mut mpsc::Receiver<WriteOp>, batch: &mut Vec<WriteOp>, max: usize) {
    while batch.len() < max {
        match queue.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
}

fn append(
    tx: &Connection,
    req: &AppendRequest,
    last_position: &mut Option<u64>,
) -> Result<AppendOutcome, JournalError> {
    let meta = &req.metadata;
    if let Some(original) =
        schema::command_record(tx, &meta.principal, &meta.command_id).map_err(storage)?
    {
        return Ok(AppendOutcome::Duplicate(original));
    }
    let actual = schema::highest_sequence(tx, &req.stream).map_err(storage)?;
    if actual != req.expected_sequence {
        return Err(JournalError::Conflict {
            stream: req.stream.clone(),
            expected: req.expected_sequence,
            actual,
        });
    }
    let s = &req.stream;
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, schema_version, payload, \
             timestamp_ms, command_id, correlation_id, causation_id, principal) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .map_err(storage)?;
    let mut sequence = actual;
    for event in &req.events {
        sequence += 1;
        insert
            .execute(params![
                s.aggregate_type,
                s.aggregate_id,
                to_i64(sequence),
                event.event_type,
                event.schema_version,
                event.payload,
                meta.timestamp_ms,
                meta.command_id,
                meta.correlation_id,
                meta.causation_id,
                meta.principal
            ])
            .map_err(storage)?;
        *last_position = Some(tx.last_insert_rowid() as u64);
    }
    let (first, last) = if req.events.is_empty() {
        (0, 0)
    } else {
        (actual + 1, sequence)
    };
    let record = CommandRecord {
        principal: meta.principal.clone(),
        command_id: meta.command_id.clone(),
        stream: req.stream.clone(),
        outcome: CommandOutcome::Succeeded {
            version: sequence,
            first_sequence: first,
            last_sequence: last,
        },
        recorded_at_ms: meta.timestamp_ms,
    };
    schema::insert_command_record(tx, &record).map_err(storage)?;
    Ok(AppendOutcome::Appended(record))
}

fn record_rejection(
    tx: &Connection,
    record: CommandRecord,
    decided_at: u64,
) -> Result<CommandRecord, JournalError> {
    if let Some(original) =
        schema::command_record(tx, &record.principal, &record.command_id).map_err(storage)?
    {
        return Ok(original);
    }
    let actual = schema::highest_sequence(tx, &record.stream).map_err(storage)?;
    if actual != decided_at {
        return Err(JournalError::Conflict {
            stream: record.stream,
            expected: decided_at,
            actual,
        });
    }
    schema::insert_command_record(tx, &record).map_err(storage)?;
    Ok(record)
}

fn delete_up_to(tx: &Connection, stream: &StreamId, to: u64) -> Result<(), JournalError> {
    // Record the floor first: the events about to go may include the newest one.
    let highest = schema::highest_sequence(tx, stream).map_err(storage)?;
    tx.prepare_cached(
        "INSERT INTO streams (aggregate_type, aggregate_id, highest_sequence) VALUES (?1, ?2, ?3) \
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET highest_sequence = excluded.highest_sequence",
    )
    .and_then(|mut s| s.execute(params![stream.aggregate_type, stream.aggregate_id, to_i64(highest)]))
    .map_err(storage)?;
    tx.prepare_cached(
        "DELETE FROM events WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND sequence <= ?3",
    )
    .and_then(|mut s| {
        s.execute(params![
            stream.aggregate_type,
            stream.aggregate_id,
            to_i64(to)
        ])
    })
    .map_err(storage)?;
    Ok(())
}

fn save_snapshot(tx: &Connection, snap: &SnapshotRecord, keep: usize) -> Result<(), JournalError> {
    let s = &snap.stream;
    tx.prepare_cached(
        "INSERT OR REPLACE INTO snapshots (aggregate_type, aggregate_id, sequence, timestamp_ms, state) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut st| st.execute(params![s.aggregate_type, s.aggregate_id, to_i64(snap.sequence), snap.timestamp_ms, snap.state]))
    .map_err(storage)?;
    tx.prepare_cached(
        "DELETE FROM snapshots WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND sequence NOT IN \
         (SELECT sequence FROM snapshots WHERE aggregate_type = ?1 AND aggregate_id = ?2 \
          ORDER BY sequence DESC LIMIT ?3)",
    )
    .and_then(|mut st| {
        st.execute(params![
            s.aggregate_type,
            s.aggregate_id,
            keep.max(1) as i64
        ])
    })
    .map_err(storage)?;
    Ok(())
}
