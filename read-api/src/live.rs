//! Live push: a room's view changes as they are projected, for the gRPC stream and SSE alike.
//!
//! One task per subscriber follows the room's version in the view. It wakes on every commit of
//! the updater when that runs in this process, and polls the store otherwise (another process
//! writes it). Each update carries the messages whose `changed_version` lies in
//! `(previous version, new version]`, so every change is sent exactly once, in order; a
//! subscriber resumes after a disconnect by passing the last version it received.

use std::time::Duration;

use kiroku_read_model_updater::{MessageView, RoomSummary};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::error::ReadError;
use crate::query::{ReadQueries, check_id};

/// Messages read per store query while catching up.
const CHANGES_PER_READ: usize = 500;
/// Updates buffered for a slow subscriber before its task waits for it.
const BUFFERED_UPDATES: usize = 16;

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

/// Ends every live stream (on shutdown, so servers can drain).
#[derive(Clone)]
pub struct LiveStreams {
    closing: watch::Sender<bool>,
    poll: Duration,
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
        }
    }

    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Follows `room_id` from `after_version`. An unknown room is NOT_FOUND (before the stream
    /// starts); a failure later ends the stream with that error.
    pub async fn watch_room(
        &self,
        queries: &ReadQueries,
        room_id: &str,
        after_version: u64,
    ) -> Result<ReceiverStream<Result<RoomUpdate, ReadError>>, ReadError> {
        check_id("room id", room_id)?;
        queries.existing_room(room_id).await?;
        let (tx, rx) = mpsc::channel(BUFFERED_UPDATES);
        let follower = Follower {
            queries: queries.clone(),
            room_id: room_id.to_owned(),
            after: after_version,
            commits: queries.commits(),
            closing: self.closing.subscribe(),
            poll: self.poll,
        };
        tokio::spawn(follower.run(tx));
        Ok(ReceiverStream::new(rx))
    }
}

struct Follower {
    queries: ReadQueries,
    room_id: String,
    after: u64,
    commits: Option<watch::Receiver<crate::Progress>>,
    closing: watch::Receiver<bool>,
    poll: Duration,
}

impl Follower {
    async fn run(mut self, tx: mpsc::Sender<Result<RoomUpdate, ReadError>>) {
        loop {
            if *self.closing.borrow() {
                return;
            }
            // Mark commits seen before reading, so a commit during the read wakes us again.
            if let Some(c) = self.commits.as_mut() {
                c.borrow_and_update();
            }
            match self.next_update().await {
                Ok(Some(update)) => {
                    self.after = update.version;
                    if tx.send(Ok(update)).await.is_err() {
                        return; // the subscriber went away
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            // Nothing new: wait for a commit (bounded, which also covers a rebuild's switch and
            // other processes), the subscriber leaving, or shutdown.
            let wait = match &self.commits {
                Some(_) => Duration::from_secs(1),
                None => self.poll,
            };
            let (commits, closing) = (&mut self.commits, &mut self.closing);
            let commit = async {
                match commits.as_mut() {
                    Some(c) => {
                        let _ = c.changed().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = commit => {}
                _ = tokio::time::sleep(wait) => {}
                _ = tx.closed() => return,
                _ = closing.changed() => return,
            }
        }
    }

    /// The changes after `self.after`, or `None` when the view has nothing newer.
    async fn next_update(&self) -> Result<Option<RoomUpdate>, ReadError> {
        // The summary first: messages changed after it was read belong to the next update.
        let room = self.queries.existing_room(&self.room_id).await?;
        if room.version <= self.after {
            return Ok(None);
        }
        let mut messages = self
            .queries
            .store
            .message_changes(&self.room_id, self.after, CHANGES_PER_READ)
            .await?;
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
