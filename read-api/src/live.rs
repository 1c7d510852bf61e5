//! Live push: a room's view changes as they are projected, for the gRPC stream and SSE alike.
//!
//! One task per subscriber follows the room's version in the view. When the updater runs in this
//! process the task wakes only for commits that touched its room (the updater's `changes`); when
//! another process writes the views it polls the store. Each update carries the messages whose `changed_version` lies in
//! `(previous version, new version]`, so every change is sent exactly once, in order; a
//! subscriber resumes after a disconnect by passing the last version it received.

use std::time::Duration;

use kiroku_read_model_updater::Changed;
use kiroku_read_model_updater::{MessageView, RoomSummary};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::error::ReadError;
use crate::limits::{Caps, Limiter, Permit, ReadLimits};
use crate::query::{ReadQueries, check_id};

/// Messages read per store query while catching up.
const CHANGES_PER_READ: usize = 500;
/// The aggregate type whose views are pushed.
const ROOM: &str = "room";
/// Updates buffered for a slow subscriber before its task waits for it.
const BUFFERED_UPDATES: usize = 16;
/// What the limiter calls the streams in refusals.
const STREAMS: &str = "live streams";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomUpdate {
    /// Every change up to this room version has been sent.
    pub version: u64,
    /// The room's summary once the update reaches the newest version read; `None` while a long
    /// backlog is sent in several updates.
    pub room: Option<RoomSummary>,
    /// Messages changed since the previous update (posted, edited or deleted), oldest change
    /// first.
    pub messages: Vec<MessageView>,
}

/// Opens live streams (capped per principal and in total) and ends them all on shutdown, so
/// servers can drain.
#[derive(Clone)]
pub struct LiveStreams {
    closing: watch::Sender<bool>,
    poll: Duration,
    changes: Option<broadcast::Sender<Changed>>,
    /// Streams open, gRPC and SSE together.
    open: Limiter,
}

impl Default for LiveStreams {
    fn default() -> Self {
        Self::new(Duration::from_millis(50))
    }
}

impl LiveStreams {
    /// `poll`: how often to look at the store when no updater in this process wakes us.
    pub fn new(poll: Duration) -> Self {
        Self {
            closing: watch::channel(false).0,
            poll,
            changes: None,
            open: Limiter::new(STREAMS, ReadLimits::default().streams),
        }
    }

    /// Caps the streams open at once (beyond: RESOURCE_EXHAUSTED before the stream starts).
    pub fn with_caps(mut self, caps: Caps) -> Self {
        self.open = Limiter::new(STREAMS, caps);
        self
    }

    /// The caps in force.
    pub fn caps(&self) -> Caps {
        self.open.caps()
    }

    /// Wake subscribers from the commits of the updater in this process instead of polling.
    pub fn following(mut self, changes: broadcast::Sender<Changed>) -> Self {
        self.changes = Some(changes);
        self
    }

    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Follows `room_id` from `after_version` for `principal`, holding one of its stream slots
    /// until the stream ends (also when the subscriber goes away). An unknown room is NOT_FOUND
    /// and a reached cap RESOURCE_EXHAUSTED, both before the stream starts; a failure later ends
    /// the stream with that error.
    pub async fn watch_room(
        &self,
        queries: &ReadQueries,
        principal: &str,
        room_id: &str,
        after_version: u64,
    ) -> Result<ReceiverStream<Result<RoomUpdate, ReadError>>, ReadError> {
        check_id("room id", room_id)?;
        let slot = self.open.try_acquire(principal)?;
        // Subscribed before the first read, so no commit after it goes unnoticed.
        let changes = self.changes.as_ref().map(broadcast::Sender::subscribe);
        queries.existing_room(room_id).await?;
        let (tx, rx) = mpsc::channel(BUFFERED_UPDATES);
        let follower = Follower {
            queries: queries.clone(),
            room_id: room_id.to_owned(),
            after: after_version,
            changes,
            closing: self.closing.subscribe(),
            poll: self.poll,
            _slot: slot,
        };
        tokio::spawn(follower.run(tx));
        Ok(ReceiverStream::new(rx))
    }
}

struct Follower {
    queries: ReadQueries,
    room_id: String,
    after: u64,
    changes: Option<broadcast::Receiver<Changed>>,
    closing: watch::Receiver<bool>,
    poll: Duration,
    /// Released when the task ends: the subscriber left, the stream failed, or shutdown.
    _slot: Permit,
}

impl Follower {
    async fn run(mut self, tx: mpsc::Sender<Result<RoomUpdate, ReadError>>) {
        // The newest version of the room the updater's commits announced; `None` when there is
        // no announcement to trust (no updater here, lagged, timed out): then ask the store.
        let mut announced: Option<u64> = None;
        loop {
            if *self.closing.borrow() {
                return;
            }
            if announced.is_none_or(|v| v > self.after) {
                match self.next_update().await {
                    Ok(Some(update)) => {
                        self.after = update.version;
                        if !self.send(&tx, Ok(update)).await {
                            return; // the subscriber went away, or shutdown
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.send(&tx, Err(e)).await;
                        return;
                    }
                }
            }
            // Nothing new: wait for a commit that moved this room past what was sent (bounded,
            // which also covers a rebuild's switch), the subscriber leaving, or shutdown.
            let (changes, closing) = (&mut self.changes, &mut self.closing);
            let (room_id, after) = (self.room_id.as_str(), self.after);
            let wait = if changes.is_some() {
                Duration::from_secs(1)
            } else {
                self.poll
            };
            let commit = async {
                let Some(rx) = changes.as_mut() else {
                    return std::future::pending().await;
                };
                loop {
                    match rx.recv().await {
                        Ok(touched) => {
                            let ours = touched.iter().find(|(s, _)| {
                                s.aggregate_type == ROOM && s.aggregate_id == room_id
                            });
                            if let Some((_, version)) = ours.filter(|(_, v)| *v > after) {
                                return Some(*version);
                            }
                        }
                        // Fell behind: look for ourselves.
                        Err(broadcast::error::RecvError::Lagged(_)) => return None,
                        // The updater stopped: poll.
                        Err(broadcast::error::RecvError::Closed) => {
                            return std::future::pending().await;
                        }
                    }
                }
            };
            announced = tokio::select! {
                version = commit => version,
                _ = tokio::time::sleep(wait) => None,
                _ = tx.closed() => return,
                _ = closing.changed() => return,
            };
        }
    }

    /// Hands an update to the subscriber's buffer; `false` when it went away or the server is
    /// shutting down (a subscriber that stopped reading must not hold up shutdown).
    async fn send(
        &mut self,
        tx: &mpsc::Sender<Result<RoomUpdate, ReadError>>,
        update: Result<RoomUpdate, ReadError>,
    ) -> bool {
        tokio::select! {
            sent = tx.send(update) => sent.is_ok(),
            _ = self.closing.wait_for(|closing| *closing) => false,
        }
    }

    /// The changes after `self.after`, or `None` when the view has nothing newer.
    async fn next_update(&self) -> Result<Option<RoomUpdate>, ReadError> {
        // Summary and changes from one snapshot of one active version (a rebuild's switch
        // between two reads could otherwise pair a newer summary with an older version's
        // changes, and those in between would never be sent).
        let (room, mut messages) = self
            .queries
            .store
            .room_changes(&self.room_id, self.after, CHANGES_PER_READ)
            .await?
            .ok_or_else(|| {
                ReadError::NotFound(format!("room {:?} does not exist", self.room_id))
            })?;
        if room.version <= self.after {
            return Ok(None);
        }
        let more = messages.len() == CHANGES_PER_READ;
        messages.retain(|m| m.changed_version <= room.version);
        let update = match (more, messages.last()) {
            (true, Some(last)) if last.changed_version < room.version => RoomUpdate {
                version: last.changed_version,
                room: None,
                messages,
            },
            _ => RoomUpdate {
                version: room.version,
                room: Some(room),
                messages,
            },
        };
        Ok(Some(update))
    }
}
