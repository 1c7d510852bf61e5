//! Read stores: where projected views live, with everything needed to apply each event exactly
//! once (per-aggregate applied sequence numbers, the checkpoint, dead letters) in the same
//! transaction as the views.
//!
//! A projection's tables are versioned (`rooms_v3`, …): a rebuild fills a new version while the
//! active one serves, then one row switches which version is active.

mod postgres;
mod sql;
mod sqlite;

use std::collections::HashMap;

use async_trait::async_trait;
use kiroku_journal::{Envelope, StreamId};
use serde::Serialize;

use crate::Change;
pub use postgres::PostgresReadStore;
pub use sqlite::SqliteReadStore;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The batch skips sequence numbers of an aggregate; nothing was written. The updater reads
    /// the missing events from the journal and tries again.
    #[error("{stream}: event {got} arrived but {expected} is the next to apply")]
    Gap {
        stream: StreamId,
        expected: u64,
        got: u64,
    },
    #[error("unknown projection {0}")]
    UnknownProjection(String),
    /// A transient failure (busy, connection lost): try again.
    #[error("read store unavailable: {0}")]
    Unavailable(String),
    /// The store itself cannot do the work, whatever the events: its tables are missing or of
    /// another shape (a migration not run, a table renamed or dropped), it denies access, it is
    /// read-only, its disk is full or failing, its file is corrupt. Not transient, and never one
    /// event's fault: the updater restarts (with backoff) until someone repairs the store, and
    /// parks nothing meanwhile.
    #[error("read store broken: {0}")]
    Broken(String),
    /// Any other failure. In a commit it may come from one event's data (a constraint or a
    /// value the store refuses): the updater then parks that event.
    #[error("read store error: {0}")]
    Storage(String),
    /// Another process changed what this request relied on (e.g. a dead letter already
    /// resolved).
    #[error("{0}")]
    Conflict(String),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// Whether a refused commit may be the fault of one of its events (which the updater then
    /// finds and parks). Only a [`StoreError::Storage`] may: every other error names something
    /// that no event can cause.
    pub fn may_be_an_events_fault(&self) -> bool {
        matches!(self, StoreError::Storage(_))
    }
}

/// One event and what its projection made of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectedEvent {
    pub envelope: Envelope,
    /// The changes to apply, or why the projection failed (after `attempts` tries): such an event
    /// is parked as a dead letter.
    pub result: Result<Vec<Change>, Poison>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    pub error: String,
    pub attempts: u32,
}

/// A parked event with why it failed. While an aggregate has parked events, its later events
/// are parked behind them, so its order is never broken; other aggregates go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub projection: String,
    pub envelope: Envelope,
    pub error: String,
    pub attempts: u32,
    pub parked_ms: i64,
}

/// What one updater transaction writes.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub projection: String,
    pub version: u32,
    /// In feed order. Per aggregate: an event already applied is skipped (a duplicate); the next
    /// one is applied (or parked if poison, or if an earlier one is parked); a later one is a
    /// [`StoreError::Gap`] and nothing is written.
    pub events: Vec<ProjectedEvent>,
    /// The feed position after this batch.
    pub position: u64,
    /// Commit time of the newest event in the batch (for lag in seconds).
    pub last_event_ms: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    pub applied: usize,
    pub duplicates: usize,
    /// Events parked (poison, or behind a parked event of their aggregate).
    pub parked: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    pub position: u64,
    pub last_event_ms: i64,
    pub updated_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProjectionState {
    pub projection: String,
    pub active_version: u32,
    pub building_version: Option<u32>,
    pub checkpoint: Checkpoint,
    pub dead_letters: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoomSummary {
    pub room_id: String,
    pub name: String,
    pub owner: String,
    pub members: Vec<String>,
    pub message_count: u64,
    pub archived: bool,
    pub created_ms: i64,
    pub last_activity_ms: i64,
    /// The room's version (sequence number) this summary reflects.
    pub version: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MessageView {
    pub room_id: String,
    pub message_id: String,
    /// The room version that posted it: messages are ordered by it.
    pub sequence: u64,
    pub author: String,
    pub body: String,
    pub edited: bool,
    pub deleted: bool,
    pub posted_ms: i64,
    pub edited_ms: Option<i64>,
    /// The room version that last changed it (live push resumes from here).
    pub changed_version: u64,
}

/// Where the next page of messages starts (exclusive): opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub u64);

impl Cursor {
    const PREFIX: &'static str = "m1.";

    pub fn encode(&self) -> String {
        format!("{}{}", Self::PREFIX, self.0)
    }

    pub fn parse(s: &str) -> Result<Cursor, String> {
        s.strip_prefix(Self::PREFIX)
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n > 0)
            .map(Cursor)
            .ok_or_else(|| format!("{s:?} is not a cursor this API returned"))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MessagePage {
    /// Newest first; deleted messages are left out.
    pub messages: Vec<MessageView>,
    #[serde(serialize_with = "serialize_cursor")]
    pub next_cursor: Option<Cursor>,
}

fn serialize_cursor<S: serde::Serializer>(c: &Option<Cursor>, s: S) -> Result<S::Ok, S::Error> {
    match c {
        Some(c) => s.serialize_some(&c.encode()),
        None => s.serialize_none(),
    }
}

/// Every row of a projection version, in a canonical order: two versions hold the same views
/// exactly when their dumps are equal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewsDump {
    pub rooms: Vec<RoomSummary>,
    pub messages: Vec<MessageView>,
    pub applied: Vec<(String, String, u64)>,
}

#[async_trait]
pub trait ReadStore: Send + Sync + 'static {
    /// Creates or migrates the store's tables (versioned migrations; safe to run again).
    async fn migrate(&self) -> Result<(), StoreError>;

    async fn state(&self, projection: &str) -> Result<ProjectionState, StoreError>;

    async fn checkpoint(&self, projection: &str, version: u32) -> Result<Checkpoint, StoreError>;

    /// The last applied sequence number of each of `streams` in a version (0 when none).
    async fn applied_sequences(
        &self,
        projection: &str,
        version: u32,
        streams: &[StreamId],
    ) -> Result<HashMap<StreamId, u64>, StoreError>;

    /// Applies a batch and moves the checkpoint, in one transaction.
    async fn commit(&self, batch: Batch) -> Result<CommitOutcome, StoreError>;

    // Rebuild.

    /// Creates (or, after a kill, finds again) the version a rebuild fills. Versions older than
    /// the active one are dropped here.
    async fn begin_rebuild(&self, projection: &str) -> Result<u32, StoreError>;

    /// Makes `version` the active one, atomically.
    async fn finish_rebuild(&self, projection: &str, version: u32) -> Result<(), StoreError>;

    // Dead letters.

    async fn dead_letters(
        &self,
        projection: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError>;

    /// The parked events of one aggregate in the active version, oldest first.
    async fn parked(
        &self,
        projection: &str,
        stream: &StreamId,
    ) -> Result<Vec<DeadLetter>, StoreError>;

    /// Applies parked events of one aggregate in order (each must still be parked and be the
    /// next of its aggregate) and removes them from the dead letters; an `Err` result records the
    /// new error and attempts on that event and ends the resolution. One transaction.
    async fn resolve(
        &self,
        projection: &str,
        stream: &StreamId,
        applied: Vec<ProjectedEvent>,
    ) -> Result<(), StoreError>;

    // Queries (always on the active version).

    async fn applied_sequence(
        &self,
        projection: &str,
        stream: &StreamId,
    ) -> Result<u64, StoreError>;

    async fn room(&self, room_id: &str) -> Result<Option<RoomSummary>, StoreError>;

    async fn messages(
        &self,
        room_id: &str,
        before: Option<Cursor>,
        limit: usize,
    ) -> Result<MessagePage, StoreError>;

    async fn member_rooms(
        &self,
        user_id: &str,
        limit: usize,
    ) -> Result<Vec<RoomSummary>, StoreError>;

    /// Messages of a room changed after room version `after`, in the order they changed.
    async fn message_changes(
        &self,
        room_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<MessageView>, StoreError>;

    /// A room's summary and its messages changed after room version `after` (at most `limit`, in
    /// the order they changed), read from one snapshot of one active version, so a rebuild's
    /// switch can never fall between the two. `None` for an unknown room.
    async fn room_changes(
        &self,
        room_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Option<(RoomSummary, Vec<MessageView>)>, StoreError>;

    /// Everything in one version of the rooms projection (for comparing a rebuild with the live
    /// views).
    async fn dump(&self, projection: &str, version: u32) -> Result<ViewsDump, StoreError>;
}

/// Opens a read store by URL: `sqlite:///path/views.db` (or a bare path) or `postgres://…`.
pub async fn open_store(url: &str) -> Result<std::sync::Arc<dyn ReadStore>, StoreError> {
    open_store_with_wal_ceiling(url, kiroku_journal::wal::DEFAULT_WAL_CEILING).await
}

/// [`open_store`], with a SQLite store's WAL kept under `wal_ceiling` bytes (0: unbounded).
pub async fn open_store_with_wal_ceiling(
    url: &str,
    wal_ceiling: u64,
) -> Result<std::sync::Arc<dyn ReadStore>, StoreError> {
    let store: std::sync::Arc<dyn ReadStore> =
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            std::sync::Arc::new(PostgresReadStore::connect(url).await?)
        } else {
            let path = url.strip_prefix("sqlite://").unwrap_or(url);
            if path.is_empty() {
                return Err(StoreError::Storage(format!(
                    "{url:?} names no file: use sqlite:///path/to/views.db or postgres://…"
                )));
            }
            std::sync::Arc::new(SqliteReadStore::open_with_wal_ceiling(path, wal_ceiling)?)
        };
    store.migrate().await?;
    Ok(store)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn check_projection(projection: &str) -> Result<(), StoreError> {
    if crate::PROJECTIONS.contains(&projection) {
        Ok(())
    } else {
        Err(StoreError::UnknownProjection(projection.to_owned()))
    }
}
