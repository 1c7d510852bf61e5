//! The views' SQL, written once for both stores. Statements use `$1…` placeholders (SQLite's
//! adapter rewrites them to `?1…`); every number is a 64-bit integer and every flag 0 or 1, so
//! the same rows come back from SQLite and PostgreSQL.
//!
//! The functions are async over [`Sql`]: PostgreSQL awaits the network, SQLite's adapter answers
//! at once (it runs them on a blocking thread).

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use kiroku_journal::{Envelope, EventMetadata, StreamId};

use super::{
    Batch, Checkpoint, CommitOutcome, Cursor, DeadLetter, MessagePage, MessageView, ProjectedEvent,
    ProjectionState, ReadStore, RoomSummary, StoreError, ViewsDump, check_projection, now_ms,
};
use crate::{Change, ROOMS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    I64(i64),
    Text(String),
    Bytes(Vec<u8>),
}

impl Value {
    fn i64(&self) -> i64 {
        match self {
            Value::I64(v) => *v,
            _ => 0,
        }
    }
    fn u64(&self) -> u64 {
        self.i64().max(0) as u64
    }
    fn opt_i64(&self) -> Option<i64> {
        match self {
            Value::I64(v) => Some(*v),
            _ => None,
        }
    }
    fn text(&mut self) -> String {
        match std::mem::replace(self, Value::Null) {
            Value::Text(s) => s,
            _ => String::new(),
        }
    }
    fn bytes(&mut self) -> Vec<u8> {
        match std::mem::replace(self, Value::Null) {
            Value::Bytes(b) => b,
            _ => Vec::new(),
        }
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::I64(v)
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::I64(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::I64(v.into())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::I64(v.into())
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Bytes(v.to_vec())
    }
}

pub(crate) type Row = Vec<Value>;

macro_rules! params {
    ($($v:expr),* $(,)?) => { &[$(Value::from($v)),*] };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// One open transaction (or connection) of a store.
#[async_trait]
pub(crate) trait Sql: Send {
    fn dialect(&self) -> Dialect;
    async fn exec(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError>;
    async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError>;
    /// Several statements without parameters (DDL).
    async fn batch(&mut self, sql: &str) -> Result<(), StoreError>;
}

/// Serializes the writers of `key` across processes. SQLite needs nothing: its write
/// transactions (`BEGIN IMMEDIATE`) already exclude each other.
async fn lock(tx: &mut dyn Sql, key: &str) -> Result<(), StoreError> {
    if tx.dialect() == Dialect::Postgres {
        tx.query(
            "SELECT 1 FROM (SELECT pg_advisory_xact_lock(hashtext($1))) AS locked",
            params![key],
        )
        .await?;
    }
    Ok(())
}

/// Versioned migrations of the shared tables. Append only: never edit a shipped one.
const MIGRATIONS: &[&str] = &[
    // 1: projections, checkpoints, dead letters.
    "CREATE TABLE projections (
        name TEXT PRIMARY KEY,
        active_version BIGINT NOT NULL,
        building_version BIGINT
    );
    CREATE TABLE checkpoints (
        projection TEXT NOT NULL,
        version BIGINT NOT NULL,
        position BIGINT NOT NULL,
        last_event_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        PRIMARY KEY (projection, version)
    );
    CREATE TABLE dead_letters (
        projection TEXT NOT NULL,
        version BIGINT NOT NULL,
        aggregate_type TEXT NOT NULL,
        aggregate_id TEXT NOT NULL,
        sequence BIGINT NOT NULL,
        global_position BIGINT NOT NULL,
        event_type TEXT NOT NULL,
        schema_version BIGINT NOT NULL,
        payload BYTES NOT NULL,
        command_id TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        causation_id TEXT NOT NULL,
        principal TEXT NOT NULL,
        timestamp_ms BIGINT NOT NULL,
        error TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        parked_ms BIGINT NOT NULL,
        PRIMARY KEY (projection, version, aggregate_type, aggregate_id, sequence)
    );",
];

/// The tables of one version of the rooms projection.
fn version_ddl(v: u32) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS rooms_v{v} (
            room_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            owner TEXT NOT NULL,
            archived BIGINT NOT NULL,
            message_count BIGINT NOT NULL,
            created_ms BIGINT NOT NULL,
            last_activity_ms BIGINT NOT NULL,
            version BIGINT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS members_v{v} (
            room_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            PRIMARY KEY (room_id, user_id)
        );
        CREATE INDEX IF NOT EXISTS members_v{v}_by_user ON members_v{v} (user_id, room_id);
        CREATE TABLE IF NOT EXISTS messages_v{v} (
            room_id TEXT NOT NULL,
            message_id TEXT NOT NULL,
            sequence BIGINT NOT NULL,
            author TEXT NOT NULL,
            body TEXT NOT NULL,
            edited BIGINT NOT NULL,
            deleted BIGINT NOT NULL,
            posted_ms BIGINT NOT NULL,
            edited_ms BIGINT,
            changed_version BIGINT NOT NULL,
            PRIMARY KEY (room_id, message_id)
        );
        CREATE INDEX IF NOT EXISTS messages_v{v}_by_sequence ON messages_v{v} (room_id, sequence);
        CREATE INDEX IF NOT EXISTS messages_v{v}_by_change ON messages_v{v} (room_id, changed_version);
        CREATE TABLE IF NOT EXISTS applied_v{v} (
            aggregate_type TEXT NOT NULL,
            aggregate_id TEXT NOT NULL,
            sequence BIGINT NOT NULL,
            PRIMARY KEY (aggregate_type, aggregate_id)
        );"
    )
}

fn drop_version_ddl(v: u32) -> String {
    format!(
        "DROP TABLE IF EXISTS rooms_v{v}; DROP TABLE IF EXISTS members_v{v};
         DROP TABLE IF EXISTS messages_v{v}; DROP TABLE IF EXISTS applied_v{v};"
    )
}

fn ddl(dialect: Dialect, sql: &str) -> String {
    match dialect {
        Dialect::Sqlite => sql.replace("BYTES", "BLOB"),
        Dialect::Postgres => sql.replace("BYTES", "BYTEA"),
    }
}

/// Brings the shared tables to the newest migration and makes sure every projection has an
/// active version with its tables. Run inside one (exclusive) transaction.
pub(crate) async fn migrate(tx: &mut dyn Sql) -> Result<(), StoreError> {
    lock(tx, "kiroku-read-store-migrations").await?;
    tx.batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY,
            applied_ms BIGINT NOT NULL
        )",
    )
    .await?;
    let done = tx
        .query("SELECT max(version) FROM schema_migrations", &[])
        .await?
        .first()
        .map(|r| r[0].i64())
        .unwrap_or(0);
    for (i, migration) in MIGRATIONS.iter().enumerate() {
        let version = i as i64 + 1;
        if version <= done {
            continue;
        }
        let sql = ddl(tx.dialect(), migration);
        tx.batch(&sql).await?;
        tx.exec(
            "INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, $2)",
            params![version, now_ms()],
        )
        .await?;
    }
    for projection in crate::PROJECTIONS {
        tx.exec(
            "INSERT INTO projections (name, active_version) VALUES ($1, 1) ON CONFLICT (name) DO NOTHING",
            params![*projection],
        )
        .await?;
        let active = active_version(tx, projection).await?;
        create_version(tx, projection, active).await?;
    }
    Ok(())
}

async fn create_version(tx: &mut dyn Sql, projection: &str, v: u32) -> Result<(), StoreError> {
    tx.batch(&version_ddl(v)).await?;
    tx.exec(
        "INSERT INTO checkpoints (projection, version, position, last_event_ms, updated_ms)
         VALUES ($1, $2, 0, 0, $3) ON CONFLICT (projection, version) DO NOTHING",
        params![projection, v, now_ms()],
    )
    .await?;
    Ok(())
}

pub(crate) async fn active_version(tx: &mut dyn Sql, projection: &str) -> Result<u32, StoreError> {
    check_projection(projection)?;
    let rows = tx
        .query(
            "SELECT active_version FROM projections WHERE name = $1",
            params![projection],
        )
        .await?;
    rows.first()
        .map(|r| r[0].i64() as u32)
        .ok_or_else(|| StoreError::Storage("the read store is not migrated".into()))
}

pub(crate) async fn state(
    tx: &mut dyn Sql,
    projection: &str,
) -> Result<ProjectionState, StoreError> {
    check_projection(projection)?;
    let row = tx
        .query(
            "SELECT active_version, building_version FROM projections WHERE name = $1",
            params![projection],
        )
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::Storage("the read store is not migrated".into()))?;
    let active = row[0].i64() as u32;
    let dead_letters = tx
        .query(
            "SELECT count(*) FROM dead_letters WHERE projection = $1 AND version = $2",
            params![projection, active],
        )
        .await?
        .first()
        .map(|r| r[0].u64())
        .unwrap_or(0);
    Ok(ProjectionState {
        projection: projection.to_owned(),
        active_version: active,
        building_version: row[1].opt_i64().map(|v| v as u32),
        checkpoint: checkpoint(tx, projection, active).await?,
        dead_letters,
    })
}

pub(crate) async fn checkpoint(
    tx: &mut dyn Sql,
    projection: &str,
    version: u32,
) -> Result<Checkpoint, StoreError> {
    let rows = tx
        .query(
            "SELECT position, last_event_ms, updated_ms FROM checkpoints
             WHERE projection = $1 AND version = $2",
            params![projection, version],
        )
        .await?;
    Ok(rows
        .first()
        .map(|r| Checkpoint {
            position: r[0].u64(),
            last_event_ms: r[1].i64(),
            updated_ms: r[2].i64(),
        })
        .unwrap_or_default())
}

async fn applied_of(tx: &mut dyn Sql, version: u32, stream: &StreamId) -> Result<u64, StoreError> {
    let rows = tx
        .query(
            &format!(
                "SELECT sequence FROM applied_v{version} WHERE aggregate_type = $1 AND aggregate_id = $2"
            ),
            params![&stream.aggregate_type, &stream.aggregate_id],
        )
        .await?;
    Ok(rows.first().map(|r| r[0].u64()).unwrap_or(0))
}

pub(crate) async fn applied_sequences(
    tx: &mut dyn Sql,
    projection: &str,
    version: u32,
    streams: &[StreamId],
) -> Result<HashMap<StreamId, u64>, StoreError> {
    check_projection(projection)?;
    let mut out = HashMap::with_capacity(streams.len());
    for stream in streams {
        if !out.contains_key(stream) {
            let seq = applied_of(tx, version, stream).await?;
            out.insert(stream.clone(), seq);
        }
    }
    Ok(out)
}

pub(crate) async fn applied_sequence(
    tx: &mut dyn Sql,
    projection: &str,
    stream: &StreamId,
) -> Result<u64, StoreError> {
    let version = active_version(tx, projection).await?;
    applied_of(tx, version, stream).await
}

async fn set_applied(
    tx: &mut dyn Sql,
    version: u32,
    stream: &StreamId,
    sequence: u64,
) -> Result<(), StoreError> {
    tx.exec(
        &format!(
            "INSERT INTO applied_v{version} (aggregate_type, aggregate_id, sequence) VALUES ($1, $2, $3)
             ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET sequence = excluded.sequence"
        ),
        params![&stream.aggregate_type, &stream.aggregate_id, sequence],
    )
    .await?;
    Ok(())
}

async fn park(
    tx: &mut dyn Sql,
    projection: &str,
    version: u32,
    event: &Envelope,
    error: &str,
    attempts: u32,
) -> Result<(), StoreError> {
    let m = &event.metadata;
    tx.exec(
        "INSERT INTO dead_letters (projection, version, aggregate_type, aggregate_id, sequence,
            global_position, event_type, schema_version, payload, command_id, correlation_id,
            causation_id, principal, timestamp_ms, error, attempts, parked_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
         ON CONFLICT (projection, version, aggregate_type, aggregate_id, sequence) DO NOTHING",
        &[
            projection.into(),
            version.into(),
            (&event.stream.aggregate_type).into(),
            (&event.stream.aggregate_id).into(),
            event.sequence.into(),
            event.global_position.into(),
            (&event.event_type).into(),
            event.schema_version.into(),
            event.payload.as_slice().into(),
            (&m.command_id).into(),
            (&m.correlation_id).into(),
            (&m.causation_id).into(),
            (&m.principal).into(),
            m.timestamp_ms.into(),
            error.into(),
            attempts.into(),
            now_ms().into(),
        ],
    )
    .await?;
    Ok(())
}

/// Applies a batch and moves the checkpoint. Run inside one transaction.
pub(crate) async fn commit(tx: &mut dyn Sql, batch: Batch) -> Result<CommitOutcome, StoreError> {
    check_projection(&batch.projection)?;
    let (projection, version) = (batch.projection.as_str(), batch.version);
    lock(tx, projection).await?;
    let mut parked: HashSet<StreamId> = tx
        .query(
            "SELECT DISTINCT aggregate_type, aggregate_id FROM dead_letters
             WHERE projection = $1 AND version = $2",
            params![projection, version],
        )
        .await?
        .into_iter()
        .map(|mut r| StreamId::new(r[0].text(), r[1].text()))
        .collect();
    let mut applied: HashMap<StreamId, (u64, bool)> = HashMap::new();
    let mut out = CommitOutcome::default();
    for ProjectedEvent { envelope, result } in &batch.events {
        let stream = &envelope.stream;
        let current = match applied.get(stream) {
            Some((seq, _)) => *seq,
            None => {
                let seq = applied_of(tx, version, stream).await?;
                applied.insert(stream.clone(), (seq, false));
                seq
            }
        };
        if envelope.sequence <= current {
            out.duplicates += 1;
            continue;
        }
        if parked.contains(stream) {
            park(
                tx,
                projection,
                version,
                envelope,
                "waiting behind an earlier parked event of this aggregate",
                0,
            )
            .await?;
            out.parked += 1;
            continue;
        }
        if envelope.sequence != current + 1 {
            return Err(StoreError::Gap {
                stream: stream.clone(),
                expected: current + 1,
                got: envelope.sequence,
            });
        }
        match result {
            Ok(changes) => {
                apply(tx, version, envelope, changes).await?;
                applied.insert(stream.clone(), (envelope.sequence, true));
                out.applied += 1;
            }
            Err(poison) => {
                park(
                    tx,
                    projection,
                    version,
                    envelope,
                    &poison.error,
                    poison.attempts,
                )
                .await?;
                parked.insert(stream.clone());
                out.parked += 1;
            }
        }
    }
    for (stream, (sequence, dirty)) in &applied {
        if *dirty {
            set_applied(tx, version, stream, *sequence).await?;
        }
    }
    tx.exec(
        "INSERT INTO checkpoints (projection, version, position, last_event_ms, updated_ms)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (projection, version) DO UPDATE SET
            position = CASE WHEN excluded.position > checkpoints.position
                            THEN excluded.position ELSE checkpoints.position END,
            last_event_ms = CASE WHEN excluded.last_event_ms > checkpoints.last_event_ms
                            THEN excluded.last_event_ms ELSE checkpoints.last_event_ms END,
            updated_ms = excluded.updated_ms",
        params![
            projection,
            version,
            batch.position,
            batch.last_event_ms,
            now_ms()
        ],
    )
    .await?;
    Ok(out)
}

/// Applies one event's changes to the rooms tables of `v`.
async fn apply(
    tx: &mut dyn Sql,
    v: u32,
    event: &Envelope,
    changes: &[Change],
) -> Result<(), StoreError> {
    let room = &event.stream.aggregate_id;
    let (seq, at) = (event.sequence, event.metadata.timestamp_ms);
    for change in changes {
        // Every change touches the room: its version and last activity.
        let mut touch = "";
        match change {
            Change::RoomCreated { name, owner } => {
                tx.exec(
                    &format!(
                        "INSERT INTO rooms_v{v} (room_id, name, owner, archived, message_count,
                            created_ms, last_activity_ms, version)
                         VALUES ($1, $2, $3, 0, 0, $4, $4, $5) ON CONFLICT (room_id) DO NOTHING"
                    ),
                    params![room, name, owner, at, seq],
                )
                .await?;
                add_member(tx, v, room, owner).await?;
            }
            Change::RoomRenamed { name } => {
                tx.exec(
                    &format!("UPDATE rooms_v{v} SET name = $2 WHERE room_id = $1"),
                    params![room, name],
                )
                .await?;
            }
            Change::MemberAdded { user_id } => add_member(tx, v, room, user_id).await?,
            Change::MemberRemoved { user_id } => {
                tx.exec(
                    &format!("DELETE FROM members_v{v} WHERE room_id = $1 AND user_id = $2"),
                    params![room, user_id],
                )
                .await?;
            }
            Change::MessagePosted {
                message_id,
                author,
                body,
            } => {
                tx.exec(
                    &format!(
                        "INSERT INTO messages_v{v} (room_id, message_id, sequence, author, body,
                            edited, deleted, posted_ms, edited_ms, changed_version)
                         VALUES ($1, $2, $3, $4, $5, 0, 0, $6, NULL, $3)
                         ON CONFLICT (room_id, message_id) DO NOTHING"
                    ),
                    params![room, message_id, seq, author, body, at],
                )
                .await?;
                touch = ", message_count = message_count + 1";
            }
            Change::MessageEdited { message_id, body } => {
                tx.exec(
                    &format!(
                        "UPDATE messages_v{v} SET body = $3, edited = 1, edited_ms = $4,
                            changed_version = $5
                         WHERE room_id = $1 AND message_id = $2"
                    ),
                    params![room, message_id, body, at, seq],
                )
                .await?;
            }
            Change::MessageDeleted { message_id } => {
                let n = tx
                    .exec(
                        &format!(
                            "UPDATE messages_v{v} SET deleted = 1, body = '', changed_version = $3
                             WHERE room_id = $1 AND message_id = $2 AND deleted = 0"
                        ),
                        params![room, message_id, seq],
                    )
                    .await?;
                if n > 0 {
                    touch = ", message_count = message_count - 1";
                }
            }
            Change::RoomArchived => touch = ", archived = 1",
        }
        tx.exec(
            &format!(
                "UPDATE rooms_v{v} SET last_activity_ms = $2, version = $3{touch} WHERE room_id = $1"
            ),
            params![room, at, seq],
        )
        .await?;
    }
    Ok(())
}

async fn add_member(tx: &mut dyn Sql, v: u32, room: &str, user: &str) -> Result<(), StoreError> {
    tx.exec(
        &format!(
            "INSERT INTO members_v{v} (room_id, user_id) VALUES ($1, $2)
             ON CONFLICT (room_id, user_id) DO NOTHING"
        ),
        params![room, user],
    )
    .await?;
    Ok(())
}

// Rebuild.

pub(crate) async fn begin_rebuild(tx: &mut dyn Sql, projection: &str) -> Result<u32, StoreError> {
    lock(tx, projection).await?;
    let state = state(tx, projection).await?;
    if let Some(building) = state.building_version {
        create_version(tx, projection, building).await?;
        return Ok(building);
    }
    let active = state.active_version;
    // Keep the active version and the one before it (a query that read the version number just
    // before the last switch may still be reading it); drop anything older.
    for old in 1..active.saturating_sub(1) {
        tx.batch(&drop_version_ddl(old)).await?;
    }
    let next = active + 1;
    // A version number is never reused: start from empty tables even if some were left behind.
    tx.batch(&drop_version_ddl(next)).await?;
    tx.exec(
        "DELETE FROM checkpoints WHERE projection = $1 AND version = $2",
        params![projection, next],
    )
    .await?;
    tx.exec(
        "DELETE FROM dead_letters WHERE projection = $1 AND version = $2",
        params![projection, next],
    )
    .await?;
    create_version(tx, projection, next).await?;
    tx.exec(
        "UPDATE projections SET building_version = $2 WHERE name = $1",
        params![projection, next],
    )
    .await?;
    Ok(next)
}

pub(crate) async fn finish_rebuild(
    tx: &mut dyn Sql,
    projection: &str,
    version: u32,
) -> Result<(), StoreError> {
    lock(tx, projection).await?;
    let state = state(tx, projection).await?;
    if state.building_version != Some(version) {
        return Err(StoreError::Conflict(format!(
            "version {version} of {projection} is not being rebuilt (building: {:?})",
            state.building_version
        )));
    }
    tx.exec(
        "UPDATE projections SET active_version = $2, building_version = NULL WHERE name = $1",
        params![projection, version],
    )
    .await?;
    Ok(())
}

// Dead letters.

const DEAD_LETTER_COLUMNS: &str = "projection, aggregate_type, aggregate_id, sequence,
    global_position, event_type, schema_version, payload, command_id, correlation_id,
    causation_id, principal, timestamp_ms, error, attempts, parked_ms";

fn dead_letter(mut r: Row) -> DeadLetter {
    DeadLetter {
        projection: r[0].text(),
        envelope: Envelope {
            stream: StreamId::new(r[1].text(), r[2].text()),
            sequence: r[3].u64(),
            global_position: r[4].u64(),
            event_type: r[5].text(),
            schema_version: r[6].i64() as u32,
            payload: r[7].bytes(),
            metadata: EventMetadata {
                command_id: r[8].text(),
                correlation_id: r[9].text(),
                causation_id: r[10].text(),
                principal: r[11].text(),
                timestamp_ms: r[12].i64(),
            },
        },
        error: r[13].text(),
        attempts: r[14].i64() as u32,
        parked_ms: r[15].i64(),
    }
}

pub(crate) async fn dead_letters(
    tx: &mut dyn Sql,
    projection: &str,
    limit: usize,
) -> Result<Vec<DeadLetter>, StoreError> {
    let version = active_version(tx, projection).await?;
    let rows = tx
        .query(
            &format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE projection = $1 AND version = $2
                 ORDER BY global_position LIMIT $3"
            ),
            params![projection, version, limit as u64],
        )
        .await?;
    Ok(rows.into_iter().map(dead_letter).collect())
}

pub(crate) async fn parked(
    tx: &mut dyn Sql,
    projection: &str,
    stream: &StreamId,
) -> Result<Vec<DeadLetter>, StoreError> {
    let version = active_version(tx, projection).await?;
    let rows = tx
        .query(
            &format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE projection = $1 AND version = $2
                 AND aggregate_type = $3 AND aggregate_id = $4 ORDER BY sequence"
            ),
            params![projection, version, &stream.aggregate_type, &stream.aggregate_id],
        )
        .await?;
    Ok(rows.into_iter().map(dead_letter).collect())
}

pub(crate) async fn resolve(
    tx: &mut dyn Sql,
    projection: &str,
    stream: &StreamId,
    events: Vec<ProjectedEvent>,
) -> Result<(), StoreError> {
    lock(tx, projection).await?;
    let version = active_version(tx, projection).await?;
    let mut current = applied_of(tx, version, stream).await?;
    let key = params![
        projection,
        version,
        &stream.aggregate_type,
        &stream.aggregate_id
    ];
    for ProjectedEvent { envelope, result } in events {
        let mut args = key.to_vec();
        args.push(envelope.sequence.into());
        let still_parked = !tx
            .query(
                "SELECT 1 FROM dead_letters WHERE projection = $1 AND version = $2
                 AND aggregate_type = $3 AND aggregate_id = $4 AND sequence = $5",
                &args,
            )
            .await?
            .is_empty();
        if !still_parked || envelope.stream != *stream {
            return Err(StoreError::Conflict(format!(
                "event {} of {stream} is not parked (resolved by someone else?)",
                envelope.sequence
            )));
        }
        match result {
            Ok(changes) => {
                if envelope.sequence != current + 1 {
                    return Err(StoreError::Conflict(format!(
                        "event {} of {stream} cannot be applied: {} is the next to apply",
                        envelope.sequence,
                        current + 1
                    )));
                }
                apply(tx, version, &envelope, &changes).await?;
                tx.exec(
                    "DELETE FROM dead_letters WHERE projection = $1 AND version = $2
                     AND aggregate_type = $3 AND aggregate_id = $4 AND sequence = $5",
                    &args,
                )
                .await?;
                current = envelope.sequence;
            }
            Err(poison) => {
                args.push(poison.error.into());
                args.push(poison.attempts.into());
                tx.exec(
                    "UPDATE dead_letters SET error = $6, attempts = attempts + $7
                     WHERE projection = $1 AND version = $2
                     AND aggregate_type = $3 AND aggregate_id = $4 AND sequence = $5",
                    &args,
                )
                .await?;
                break;
            }
        }
    }
    set_applied(tx, version, stream, current).await
}

// Queries.

const ROOM_COLUMNS: &str =
    "room_id, name, owner, archived, message_count, created_ms, last_activity_ms, version";

async fn room_summary(tx: &mut dyn Sql, v: u32, mut r: Row) -> Result<RoomSummary, StoreError> {
    let room_id = r[0].text();
    let members = tx
        .query(
            &format!("SELECT user_id FROM members_v{v} WHERE room_id = $1 ORDER BY user_id"),
            params![&room_id],
        )
        .await?
        .into_iter()
        .map(|mut m| m[0].text())
        .collect();
    Ok(RoomSummary {
        room_id,
        name: r[1].text(),
        owner: r[2].text(),
        members,
        archived: r[3].i64() != 0,
        message_count: r[4].u64(),
        created_ms: r[5].i64(),
        last_activity_ms: r[6].i64(),
        version: r[7].u64(),
    })
}

pub(crate) async fn room(
    tx: &mut dyn Sql,
    room_id: &str,
) -> Result<Option<RoomSummary>, StoreError> {
    let v = active_version(tx, ROOMS).await?;
    let row = tx
        .query(
            &format!("SELECT {ROOM_COLUMNS} FROM rooms_v{v} WHERE room_id = $1"),
            params![room_id],
        )
        .await?
        .into_iter()
        .next();
    match row {
        Some(r) => Ok(Some(room_summary(tx, v, r).await?)),
        None => Ok(None),
    }
}

pub(crate) async fn member_rooms(
    tx: &mut dyn Sql,
    user_id: &str,
    limit: usize,
) -> Result<Vec<RoomSummary>, StoreError> {
    let v = active_version(tx, ROOMS).await?;
    let columns = ROOM_COLUMNS
        .split(", ")
        .map(|c| format!("r.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = tx
        .query(
            &format!(
                "SELECT {columns} FROM members_v{v} m JOIN rooms_v{v} r ON r.room_id = m.room_id
                 WHERE m.user_id = $1 ORDER BY r.last_activity_ms DESC, r.room_id LIMIT $2"
            ),
            params![user_id, limit as u64],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(room_summary(tx, v, r).await?);
    }
    Ok(out)
}

const MESSAGE_COLUMNS: &str = "room_id, message_id, sequence, author, body, edited, deleted,
    posted_ms, edited_ms, changed_version";

fn message(mut r: Row) -> MessageView {
    MessageView {
        room_id: r[0].text(),
        message_id: r[1].text(),
        sequence: r[2].u64(),
        author: r[3].text(),
        body: r[4].text(),
        edited: r[5].i64() != 0,
        deleted: r[6].i64() != 0,
        posted_ms: r[7].i64(),
        edited_ms: r[8].opt_i64(),
        changed_version: r[9].u64(),
    }
}

pub(crate) async fn messages(
    tx: &mut dyn Sql,
    room_id: &str,
    before: Option<Cursor>,
    limit: usize,
) -> Result<MessagePage, StoreError> {
    let v = active_version(tx, ROOMS).await?;
    let before = before.map(|c| c.0).unwrap_or(u64::MAX);
    let mut messages: Vec<MessageView> = tx
        .query(
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages_v{v}
                 WHERE room_id = $1 AND deleted = 0 AND sequence < $2
                 ORDER BY sequence DESC LIMIT $3"
            ),
            params![room_id, before, limit as u64 + 1],
        )
        .await?
        .into_iter()
        .map(message)
        .collect();
    let next_cursor = if messages.len() > limit {
        messages.truncate(limit);
        messages.last().map(|m| Cursor(m.sequence))
    } else {
        None
    };
    Ok(MessagePage {
        messages,
        next_cursor,
    })
}

pub(crate) async fn message_changes(
    tx: &mut dyn Sql,
    room_id: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<MessageView>, StoreError> {
    let v = active_version(tx, ROOMS).await?;
    Ok(tx
        .query(
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages_v{v}
                 WHERE room_id = $1 AND changed_version > $2 ORDER BY changed_version LIMIT $3"
            ),
            params![room_id, after, limit as u64],
        )
        .await?
        .into_iter()
        .map(message)
        .collect())
}

pub(crate) async fn dump(
    tx: &mut dyn Sql,
    projection: &str,
    v: u32,
) -> Result<ViewsDump, StoreError> {
    check_projection(projection)?;
    let rows = tx
        .query(
            &format!("SELECT {ROOM_COLUMNS} FROM rooms_v{v} ORDER BY room_id"),
            &[],
        )
        .await?;
    let mut rooms = Vec::with_capacity(rows.len());
    for r in rows {
        rooms.push(room_summary(tx, v, r).await?);
    }
    let messages = tx
        .query(
            &format!("SELECT {MESSAGE_COLUMNS} FROM messages_v{v} ORDER BY room_id, sequence"),
            &[],
        )
        .await?
        .into_iter()
        .map(message)
        .collect();
    let applied = tx
        .query(
            &format!(
                "SELECT aggregate_type, aggregate_id, sequence FROM applied_v{v}
                 ORDER BY aggregate_type, aggregate_id"
            ),
            &[],
        )
        .await?
        .into_iter()
        .map(|mut r| (r[0].text(), r[1].text(), r[2].u64()))
        .collect();
    Ok(ViewsDump {
        rooms,
        messages,
        applied,
    })
}

pub(crate) type BoxFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// How a store runs a unit of work in one transaction. Every [`Runner`] is a [`ReadStore`].
pub(crate) trait Runner: Send + Sync + 'static {
    fn read<T, F>(&self, f: F) -> impl std::future::Future<Output = Result<T, StoreError>> + Send
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut dyn Sql) -> BoxFuture<'c, Result<T, StoreError>> + Send + 'static;

    fn write<T, F>(&self, f: F) -> impl std::future::Future<Output = Result<T, StoreError>> + Send
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut dyn Sql) -> BoxFuture<'c, Result<T, StoreError>> + Send + 'static;
}

macro_rules! run {
    ($self:ident . $how:ident, [$($owned:ident),*], |$tx:ident| $body:expr) => {{
        $(let $owned = $owned.to_owned();)*
        $self
            .$how(move |$tx: &mut dyn Sql| -> BoxFuture<'_, _> {
                Box::pin(async move {
                    $(let $owned = &$owned;)*
                    $body
                })
            })
            .await
    }};
}

#[async_trait]
impl<R: Runner> ReadStore for R {
    async fn migrate(&self) -> Result<(), StoreError> {
        run!(self.write, [], |tx| migrate(tx).await)
    }

    async fn state(&self, projection: &str) -> Result<ProjectionState, StoreError> {
        run!(self.read, [projection], |tx| state(tx, projection).await)
    }

    async fn checkpoint(&self, projection: &str, version: u32) -> Result<Checkpoint, StoreError> {
        run!(self.read, [projection], |tx| checkpoint(
            tx, projection, version
        )
        .await)
    }

    async fn applied_sequences(
        &self,
        projection: &str,
        version: u32,
        streams: &[StreamId],
    ) -> Result<HashMap<StreamId, u64>, StoreError> {
        run!(self.read, [projection, streams], |tx| {
            applied_sequences(tx, projection, version, streams).await
        })
    }

    async fn commit(&self, batch: Batch) -> Result<CommitOutcome, StoreError> {
        run!(self.write, [], |tx| commit(tx, batch).await)
    }

    async fn begin_rebuild(&self, projection: &str) -> Result<u32, StoreError> {
        run!(self.write, [projection], |tx| begin_rebuild(tx, projection)
            .await)
    }

    async fn finish_rebuild(&self, projection: &str, version: u32) -> Result<(), StoreError> {
        run!(self.write, [projection], |tx| finish_rebuild(
            tx, projection, version
        )
        .await)
    }

    async fn dead_letters(
        &self,
        projection: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        run!(self.read, [projection], |tx| dead_letters(
            tx, projection, limit
        )
        .await)
    }

    async fn parked(
        &self,
        projection: &str,
        stream: &StreamId,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        run!(self.read, [projection, stream], |tx| parked(
            tx, projection, stream
        )
        .await)
    }

    async fn resolve(
        &self,
        projection: &str,
        stream: &StreamId,
        applied: Vec<ProjectedEvent>,
    ) -> Result<(), StoreError> {
        run!(self.write, [projection, stream], |tx| {
            resolve(tx, projection, stream, applied).await
        })
    }

    async fn applied_sequence(
        &self,
        projection: &str,
        stream: &StreamId,
    ) -> Result<u64, StoreError> {
        run!(self.read, [projection, stream], |tx| {
            applied_sequence(tx, projection, stream).await
        })
    }

    async fn room(&self, room_id: &str) -> Result<Option<RoomSummary>, StoreError> {
        run!(self.read, [room_id], |tx| room(tx, room_id).await)
    }

    async fn messages(
        &self,
        room_id: &str,
        before: Option<Cursor>,
        limit: usize,
    ) -> Result<MessagePage, StoreError> {
        run!(self.read, [room_id], |tx| messages(
            tx, room_id, before, limit
        )
        .await)
    }

    async fn member_rooms(
        &self,
        user_id: &str,
        limit: usize,
    ) -> Result<Vec<RoomSummary>, StoreError> {
        run!(self.read, [user_id], |tx| member_rooms(tx, user_id, limit)
            .await)
    }

    async fn message_changes(
        &self,
        room_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<MessageView>, StoreError> {
        run!(self.read, [room_id], |tx| message_changes(
            tx, room_id, after, limit
        )
        .await)
    }

    async fn room_changes(
        &self,
        room_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Option<(RoomSummary, Vec<MessageView>)>, StoreError> {
        run!(self.read, [room_id], |tx| {
            let Some(summary) = room(tx, room_id).await? else {
                return Ok(None);
            };
            let changes = if summary.version > after {
                message_changes(tx, room_id, after, limit).await?
            } else {
                Vec::new()
            };
            Ok(Some((summary, changes)))
        })
    }

    async fn dump(&self, projection: &str, version: u32) -> Result<ViewsDump, StoreError> {
        run!(self.read, [projection], |tx| dump(tx, projection, version)
            .await)
    }
}
