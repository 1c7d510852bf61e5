//! The one query layer both faces (gRPC and HTTP/JSON) call: validation, consistency waits, the
//! views, projection status. Everything here speaks domain types; the faces translate.

use std::sync::Arc;
use std::time::Duration;

use kiroku_journal::{Journal, StreamId};
use kiroku_read_model_updater::{
    Consistency as Reached, ConsistencyWaiter, Cursor, MessagePage, PROJECTIONS, Progress, ROOMS,
    ReadStore, RoomSummary, StoreError, UpdaterHealth,
};
use serde::Serialize;
use tokio::sync::watch;

use crate::error::ReadError;
use crate::limits::{Caps, Limiter, ReadLimits};

/// Longest a query may wait for a consistency token.
pub const MAX_CONSISTENCY_WAIT: Duration = Duration::from_secs(30);
/// The wait when a token names no timeout.
pub const DEFAULT_CONSISTENCY_WAIT: Duration = Duration::from_secs(5);
pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 200;
pub const DEFAULT_ROOMS_LIMIT: u32 = 100;
pub const MAX_ROOMS_LIMIT: u32 = 1000;
/// The aggregate type of the reference domain's views.
const ROOM: &str = "room";

/// Read-your-writes: answer only once the view has applied `version` of `aggregate_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyToken {
    pub aggregate_id: String,
    pub version: u64,
    pub timeout: Duration,
}

impl ConsistencyToken {
    /// Splits the text form `AGGREGATE_ID:VERSION` (the id may hold colons; the version is after
    /// the last one).
    pub fn split(text: &str) -> Option<(&str, u64)> {
        let (id, version) = text.rsplit_once(':')?;
        Some((id, version.parse().ok()?))
    }

    /// Validates a token as the faces receive it; `None` when the request carries none.
    pub fn parse(
        aggregate_id: &str,
        version: u64,
        timeout_ms: u64,
    ) -> Result<Option<Self>, ReadError> {
        if aggregate_id.is_empty() && version == 0 && timeout_ms == 0 {
            return Ok(None);
        }
        if aggregate_id.is_empty() {
            return Err(ReadError::invalid(
                "a consistency token needs the aggregate id its version belongs to",
            ));
        }
        check_id("the consistency token's aggregate id", aggregate_id)?;
        let timeout = match timeout_ms {
            0 => DEFAULT_CONSISTENCY_WAIT,
            ms if Duration::from_millis(ms) <= MAX_CONSISTENCY_WAIT => Duration::from_millis(ms),
            ms => {
                return Err(ReadError::invalid(format!(
                    "consistency timeout of {ms} ms is out of range: 1..={} ms",
                    MAX_CONSISTENCY_WAIT.as_millis()
                )));
            }
        };
        Ok(Some(Self {
            aggregate_id: aggregate_id.to_owned(),
            version,
            timeout,
        }))
    }
}

/// The state of a projection as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProjectionStatus {
    pub projection: String,
    pub active_version: u32,
    pub building_version: Option<u32>,
    pub position: u64,
    /// The journal's newest position, when this process knows it.
    pub head: Option<u64>,
    pub lag_events: Option<u64>,
    pub lag_seconds: f64,
    pub dead_letters: u64,
    pub last_event_ms: i64,
    pub updated_ms: i64,
    /// The updater's health, where it runs in this process (`kiroku dev`).
    pub updater: Option<UpdaterHealth>,
}

/// Where the journal's head comes from, for lag.
#[derive(Clone)]
pub enum Head {
    /// The updater runs in this process: its published progress.
    Updater(watch::Receiver<Progress>),
    /// Ask the journal (a read API beside an SQLite journal).
    Journal(Arc<dyn Journal>),
    Unknown,
}

/// What the limiter calls consistency waits in refusals.
const WAITS: &str = "consistency waits";

/// The queries, shared by every request of both faces.
#[derive(Clone)]
pub struct ReadQueries {
    pub(crate) store: Arc<dyn ReadStore>,
    waiter: ConsistencyWaiter,
    head: Head,
    /// The health of the updater in this process, if one runs here.
    updater: Option<watch::Receiver<UpdaterHealth>>,
    /// Consistency waits in progress, per principal and in total.
    waits: Limiter,
}

impl ReadQueries {
    /// Consistency waits wake on the updater's commits when it runs in this process
    /// ([`Head::Updater`]) and poll the store otherwise.
    pub fn new(store: Arc<dyn ReadStore>, head: Head) -> Self {
        let commits = match &head {
            Head::Updater(progress) => Some(progress.clone()),
            _ => None,
        };
        Self {
            waiter: ConsistencyWaiter::new(store.clone(), ROOMS, commits),
            store,
            head,
            updater: None,
            waits: Limiter::new(WAITS, ReadLimits::default().waits),
        }
    }

    /// Caps the consistency waits in progress (beyond: RESOURCE_EXHAUSTED).
    pub fn with_wait_caps(mut self, caps: Caps) -> Self {
        self.waits = Limiter::new(WAITS, caps);
        self
    }

    /// How often a consistency wait polls the store when no updater runs in this process.
    pub fn with_wait_poll(mut self, poll: Duration) -> Self {
        self.waiter = self.waiter.with_poll_interval(poll);
        self
    }

    /// Reports the health of the updater running in this process (status, metrics, readiness).
    pub fn with_updater_health(mut self, health: watch::Receiver<UpdaterHealth>) -> Self {
        self.updater = Some(health);
        self
    }

    /// Returns once the view has applied the token's version, or says how far it got. A query
    /// that has to wait holds one of `principal`'s wait slots while it does.
    async fn consistent(
        &self,
        principal: &str,
        token: Option<&ConsistencyToken>,
    ) -> Result<(), ReadError> {
        let Some(token) = token else { return Ok(()) };
        let stream = StreamId::new(ROOM, token.aggregate_id.clone());
        // Already there (the common case right after a command): no slot needed.
        if self.waiter.applied(&stream).await? >= token.version {
            return Ok(());
        }
        let _slot = self.waits.try_acquire(principal)?;
        match self
            .waiter
            .wait_for(&stream, token.version, token.timeout)
            .await?
        {
            Reached::Reached { .. } => Ok(()),
            Reached::NotYet { applied } => Err(ReadError::NotYetConsistent {
                aggregate_id: token.aggregate_id.clone(),
                wanted: token.version,
                applied,
                waited_ms: token.timeout.as_millis() as u64,
            }),
        }
    }

    /// A room's summary, for `principal`.
    pub async fn room(
        &self,
        principal: &str,
        room_id: &str,
        token: Option<&ConsistencyToken>,
    ) -> Result<RoomSummary, ReadError> {
        check_id("room id", room_id)?;
        self.consistent(principal, token).await?;
        self.existing_room(room_id).await
    }

    pub(crate) async fn existing_room(&self, room_id: &str) -> Result<RoomSummary, ReadError> {
        self.store
            .room(room_id)
            .await?
            .ok_or_else(|| ReadError::NotFound(format!("room {room_id:?} does not exist")))
    }

    /// A page of a room's messages, newest first. `cursor` is empty for the first page.
    pub async fn messages(
        &self,
        principal: &str,
        room_id: &str,
        cursor: &str,
        page_size: u32,
        token: Option<&ConsistencyToken>,
    ) -> Result<MessagePage, ReadError> {
        check_id("room id", room_id)?;
        let limit = bounded("page_size", page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
        let before = match cursor {
            "" => None,
            c => Some(Cursor::parse(c).map_err(ReadError::invalid)?),
        };
        self.consistent(principal, token).await?;
        self.existing_room(room_id).await?;
        Ok(self.store.messages(room_id, before, limit).await?)
    }

    /// The rooms a user is a member of (no rooms is an empty list, not an error).
    pub async fn member_rooms(
        &self,
        principal: &str,
        user_id: &str,
        limit: u32,
        token: Option<&ConsistencyToken>,
    ) -> Result<Vec<RoomSummary>, ReadError> {
        check_id("user id", user_id)?;
        let limit = bounded("limit", limit, DEFAULT_ROOMS_LIMIT, MAX_ROOMS_LIMIT)?;
        self.consistent(principal, token).await?;
        Ok(self.store.member_rooms(user_id, limit).await?)
    }

    /// Position, lag and dead letters of a projection (`""` is `rooms`).
    pub async fn status(&self, projection: &str) -> Result<ProjectionStatus, ReadError> {
        let projection = if projection.is_empty() {
            ROOMS
        } else {
            projection
        };
        if !PROJECTIONS.contains(&projection) {
            return Err(ReadError::NotFound(format!(
                "there is no projection {projection:?}; known: {}",
                PROJECTIONS.join(", ")
            )));
        }
        let state = self.store.state(projection).await?;
        let head = match &self.head {
            Head::Updater(progress) => {
                let head = progress.borrow().head;
                Some(head)
            }
            Head::Journal(journal) => journal.head_position().await.map_err(|e| {
                ReadError::Unavailable(format!("cannot read the journal's head: {e}"))
            })?,
            Head::Unknown => None,
        };
        let checkpoint = state.checkpoint;
        let head = head.map(|h| h.max(checkpoint.position));
        let lag_events = head.map(|h| h - checkpoint.position);
        let lag_seconds = match lag_events {
            Some(n) if n > 0 && checkpoint.last_event_ms > 0 => {
                (now_ms() - checkpoint.last_event_ms).max(0) as f64 / 1000.0
            }
            _ => 0.0,
        };
        Ok(ProjectionStatus {
            projection: state.projection,
            active_version: state.active_version,
            building_version: state.building_version,
            position: checkpoint.position,
            head,
            lag_events,
            lag_seconds,
            dead_letters: state.dead_letters,
            last_event_ms: checkpoint.last_event_ms,
            updated_ms: checkpoint.updated_ms,
            updater: self.updater.as_ref().map(|h| h.borrow().clone()),
        })
    }
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> Self {
        match e {
            e @ StoreError::Unavailable(_) => ReadError::Unavailable(e.to_string()),
            StoreError::UnknownProjection(p) => {
                ReadError::NotFound(format!("there is no projection {p:?}"))
            }
            other => ReadError::Internal(other.to_string()),
        }
    }
}

/// A required id: not empty, and as every service checks ids.
pub(crate) fn check_id(what: &str, value: &str) -> Result<(), ReadError> {
    if value.is_empty() {
        return Err(ReadError::invalid(format!("{what} is empty")));
    }
    kiroku_core::ids::check_id(what, value).map_err(ReadError::InvalidArgument)
}

fn bounded(what: &str, value: u32, default: u32, max: u32) -> Result<usize, ReadError> {
    match value {
        0 => Ok(default as usize),
        v if v <= max => Ok(v as usize),
        v => Err(ReadError::invalid(format!(
            "{what} {v} is out of range: 1..={max}"
        ))),
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_tokens_are_validated() {
        assert_eq!(ConsistencyToken::parse("", 0, 0).unwrap(), None);
        let t = ConsistencyToken::parse("r1", 3, 0).unwrap().unwrap();
        assert_eq!((t.version, t.timeout), (3, DEFAULT_CONSISTENCY_WAIT));
        let t = ConsistencyToken::parse("r1", 3, 30_000).unwrap().unwrap();
        assert_eq!(t.timeout, MAX_CONSISTENCY_WAIT);
        for (id, version, ms, needle) in [
            ("r1", 3, 30_001, "out of range"),
            ("", 3, 0, "aggregate id"),
            ("", 0, 100, "aggregate id"),
            ("r 1", 3, 0, "whitespace"),
        ] {
            let e = ConsistencyToken::parse(id, version, ms).unwrap_err();
            assert_eq!(
                e.code(),
                tonic::Code::InvalidArgument,
                "{id} {version} {ms}"
            );
            assert!(e.to_string().contains(needle), "{e}");
        }
    }

    #[test]
    fn page_sizes_are_bounded() {
        assert_eq!(bounded("page_size", 0, 50, 200).unwrap(), 50);
        assert_eq!(bounded("page_size", 200, 50, 200).unwrap(), 200);
        let e = bounded("page_size", 201, 50, 200).unwrap_err();
        assert_eq!(e.to_string(), "page_size 201 is out of range: 1..=200");
    }
}
