//! Projections: pure functions from one event to the view changes it causes.

use kiroku_chat::{Room, RoomEvent};
use kiroku_core::Aggregate;
use kiroku_journal::Envelope;

/// The reference domain's projection: room summaries, room messages, rooms of a member.
pub const ROOMS: &str = "rooms";

/// Every projection this build knows, by name (what `kiroku rebuild NAME` accepts).
pub const PROJECTIONS: &[&str] = &[ROOMS];

/// One change to the rooms views. The store applies a batch's changes in order, in one
/// transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    RoomCreated {
        name: String,
        owner: String,
    },
    RoomRenamed {
        name: String,
    },
    MemberAdded {
        user_id: String,
    },
    MemberRemoved {
        user_id: String,
    },
    MessagePosted {
        message_id: String,
        author: String,
        body: String,
    },
    MessageEdited {
        message_id: String,
        body: String,
    },
    MessageDeleted {
        message_id: String,
    },
    RoomArchived,
}

/// Turns events into view changes. Must be deterministic: a rebuild runs it again over the same
/// events and must reach the same views.
pub trait Projection: Send + Sync + 'static {
    fn name(&self) -> &str;

    /// Whether this projection reads events of `aggregate_type` at all. Events it does not read
    /// are not tracked.
    fn reads(&self, aggregate_type: &str) -> bool;

    /// The changes `event` causes, or why it cannot be projected (a poison event: retried, then
    /// parked as a dead letter).
    fn changes(&self, event: &Envelope) -> Result<Vec<Change>, String>;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RoomsProjection;

impl Projection for RoomsProjection {
    fn name(&self) -> &str {
        ROOMS
    }

    fn reads(&self, aggregate_type: &str) -> bool {
        aggregate_type == Room::TYPE
    }

    fn changes(&self, event: &Envelope) -> Result<Vec<Change>, String> {
        let decoded = Room::decode(&event.event_type, event.schema_version, &event.payload)
            .map_err(|e| e.to_string())?;
        Ok(vec![match decoded {
            RoomEvent::Created { name, owner } => Change::RoomCreated { name, owner },
            RoomEvent::Renamed { name } => Change::RoomRenamed { name },
            RoomEvent::MemberAdded { user_id } => Change::MemberAdded { user_id },
            RoomEvent::MemberRemoved { user_id } => Change::MemberRemoved { user_id },
            RoomEvent::MessagePosted {
                message_id,
                author,
                body,
            } => Change::MessagePosted {
                message_id,
                author,
                body,
            },
            RoomEvent::MessageEdited { message_id, body } => {
                Change::MessageEdited { message_id, body }
            }
            RoomEvent::MessageDeleted { message_id } => Change::MessageDeleted { message_id },
            RoomEvent::Archived => Change::RoomArchived,
        }])
    }
}
