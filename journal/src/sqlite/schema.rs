//! The journal file's schema, its migrations, and row mapping shared by reader and writer.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::storage;
use crate::{CommandOutcome, CommandRecord, Envelope, EventMetadata, JournalError, StreamId};

/// Migrations, applied in order; `PRAGMA user_version` holds how many have run. Append only.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE events (
    global_position INTEGER PRIMARY KEY AUTOINCREMENT,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    sequence        INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    payload         BLOB    NOT NULL,
    timestamp_ms    INTEGER NOT NULL,
    command_id      TEXT    NOT NULL,
    correlation_id  TEXT    NOT NULL,
    causation_id    TEXT    NOT NULL,
    principal       TEXT    NOT NULL,
    UNIQUE (aggregate_type, aggregate_id, sequence)
);
-- The highest sequence number of a stream at the time some of its events were deleted, so that
-- deleting events never lowers it. Appends do not touch this table (the events index answers).
CREATE TABLE streams (
    aggregate_type   TEXT    NOT NULL,
    aggregate_id     TEXT    NOT NULL,
    highest_sequence INTEGER NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
) WITHOUT ROWID;
-- The decided result of every command, for idempotent resends and GetCommandResult.
CREATE TABLE commands (
    principal       TEXT    NOT NULL,
    command_id      TEXT    NOT NULL,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    succeeded       INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    first_sequence  INTEGER NOT NULL,
    last_sequence   INTEGER NOT NULL,
    error_code      INTEGER NOT NULL,
    error_message   TEXT    NOT NULL,
    recorded_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (principal, command_id)
) WITHOUT ROWID;
CREATE TABLE snapshots (
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    sequence       INTEGER NOT NULL,
    timestamp_ms   INTEGER NOT NULL,
    state          BLOB    NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
) WITHOUT ROWID;
"#];

fn configure(conn: &Connection) -> Result<(), JournalError> {
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(storage)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(storage)?;
    // FULL: every commit fsyncs the WAL, so an acknowledged append survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(storage)?;
    Ok(())
}

pub fn open_writer(path: &Path) -> Result<Connection, JournalError> {
    let mut conn = Connection::open(path).map_err(storage)?;
    configure(&conn)?;
    // Checkpoints run on their own thread (see `checkpointer`), never inside a group commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(storage)?;
    // 64 MiB of page cache: appends touch index pages all over the file.
    conn.pragma_update(None, "cache_size", -65536)
        .map_err(storage)?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Copies committed WAL frames back into the database file in the background, so that group
/// commits only ever pay for their own WAL fsync. Stops when the writer is gone.
pub fn spawn_checkpointer(
    path: &Path,
    mut committed: tokio::sync::watch::Receiver<u64>,
) -> Result<(), JournalError> {
    let conn = Connection::open(path).map_err(storage)?;
    configure(&conn)?;
    std::thread::Builder::new()
        .name("kiroku-journal-checkpoint".into())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_millis(100));
                match committed.has_changed() {
                    Err(_) => break,
                    Ok(false) => continue,
                    Ok(true) => committed.mark_unchanged(),
                }
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "journal checkpoint failed; retrying later");
                }
            }
        })
        .map_err(|e| {
            JournalError::Storage(format!("cannot start the journal checkpointer: {e}"))
        })?;
    Ok(())
}

pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), JournalError> {
    let applied: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(storage)?;
    if applied > MIGRATIONS.len() {
        return Err(JournalError::Storage(format!(
            "journal schema version {applied} is newer than this build ({}); upgrade kiroku",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction().map_err(storage)?;
        tx.execute_batch(sql).map_err(storage)?;
        tx.pragma_update(None, "user_version", i + 1)
            .map_err(storage)?;
        tx.commit().map_err(storage)?;
    }
    Ok(())
}

pub const ENVELOPE_COLUMNS: &str = "aggregate_type, aggregate_id, sequence, global_position, event_type, \
     schema_version, payload, timestamp_ms, command_id, correlation_id, causation_id, principal";

pub fn envelope(r: &Row<'_>) -> rusqlite::Result<Envelope> {
    Ok(Envelope {
        stream: StreamId {
            aggregate_type: r.get(0)?,
            aggregate_id: r.get(1)?,
        },
        sequence: r.get::<_, i64>(2)? as u64,
        global_position: r.get::<_, i64>(3)? as u64,
        event_type: r.get(4)?,
        schema_version: r.get(5)?,
        payload: r.get(6)?,
        metadata: EventMetadata {
            timestamp_ms: r.get(7)?,
            command_id: r.get(8)?,
            correlation_id: r.get(9)?,
            causation_id: r.get(10)?,
            principal: r.get(11)?,
        },
    })
}

/// The highest sequence number of a stream: the newest event's, or — if events were deleted —
/// the floor recorded at deletion time, whichever is higher.
pub fn highest_sequence(c: &Connection, stream: &StreamId) -> rusqlite::Result<u64> {
    let v: i64 = c
        .prepare_cached(
            "SELECT max(\
               coalesce((SELECT max(sequence) FROM events WHERE aggregate_type = ?1 AND aggregate_id = ?2), 0), \
               coalesce((SELECT highest_sequence FROM streams WHERE aggregate_type = ?1 AND aggregate_id = ?2), 0))",
        )?
        .query_row(params![stream.aggregate_type, stream.aggregate_id], |r| r.get(0))?;
    Ok(v as u64)
}

pub fn command_record(
    c: &Connection,
    principal: &str,
    command_id: &str,
) -> rusqlite::Result<Option<CommandRecord>> {
    c.prepare_cached(
        "SELECT aggregate_type, aggregate_id, succeeded, version, first_sequence, last_sequence, \
         error_code, error_message, recorded_at_ms FROM commands WHERE principal = ?1 AND command_id = ?2",
    )?
    .query_row(params![principal, command_id], |r| {
        let outcome = if r.get::<_, bool>(2)? {
            CommandOutcome::Succeeded {
                version: r.get::<_, i64>(3)? as u64,
                first_sequence: r.get::<_, i64>(4)? as u64,
                last_sequence: r.get::<_, i64>(5)? as u64,
            }
        } else {
            CommandOutcome::Rejected { code: r.get(6)?, message: r.get(7)? }
        };
        Ok(CommandRecord {
            principal: principal.to_owned(),
            command_id: command_id.to_owned(),
            stream: StreamId { aggregate_type: r.get(0)?, aggregate_id: r.get(1)? },
            outcome,
            recorded_at_ms: r.get(8)?,
        })
    })
    .optional()
}

pub fn insert_command_record(c: &Connection, rec: &CommandRecord) -> rusqlite::Result<()> {
    let (succeeded, version, first, last, code, message) = match &rec.outcome {
        CommandOutcome::Succeeded {
            version,
            first_sequence,
            last_sequence,
        } => (true, *version, *first_sequence, *last_sequence, 0, ""),
        CommandOutcome::Rejected { code, message } => (false, 0, 0, 0, *code, message.as_str()),
    };
    c.prepare_cached(
        "INSERT INTO commands (principal, command_id, aggregate_type, aggregate_id, succeeded, version, \
         first_sequence, last_sequence, error_code, error_message, recorded_at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        rec.principal,
        rec.command_id,
        rec.stream.aggregate_type,
        rec.stream.aggregate_id,
        succeeded,
        version as i64,
        first as i64,
        last as i64,
        code,
        message,
        rec.recorded_at_ms
    ])?;
    Ok(())
}
