use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Who sent a command, as established by authentication (never taken from the request body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: String,
}

impl Caller {
    pub fn new(principal: impl Into<String>) -> Self {
        Self {
            principal: principal.into(),
        }
    }
}

/// An event ready for the journal: its type name, schema version and protobuf payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Vec<u8>,
}

/// A stored event could not be turned back into a domain event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode event {event_type} v{schema_version}: {reason}")]
pub struct DecodeError {
    pub event_type: String,
    pub schema_version: u32,
    pub reason: String,
}

/// Why an aggregate refused a command. The kind decides the status a client sees; the message
/// is written for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectionKind {
    /// The aggregate does not exist (a non-create command to an unknown id).
    NotFound,
    /// A create command for an aggregate that exists already.
    AlreadyExists,
    /// The command itself is malformed (a name too long, an empty body).
    InvalidArgument,
    /// The command is well formed but the aggregate's state or rules forbid it for this caller
    /// (not a member, not the author, archived).
    FailedPrecondition,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub kind: RejectionKind,
    pub message: String,
}

impl Rejection {
    pub fn new(kind: RejectionKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(RejectionKind::NotFound, message)
    }
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(RejectionKind::AlreadyExists, message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(RejectionKind::InvalidArgument, message)
    }
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(RejectionKind::FailedPrecondition, message)
    }
}

/// An event-sourced aggregate. The implementing type is the aggregate's state; `Default` is the
/// state before its first event.
///
/// Both `handle` and `apply` are pure: they must not do IO, read clocks or draw random numbers,
/// so that replaying the same events always rebuilds the same state.
pub trait Aggregate:
    Default + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The aggregate type's stable name, stored with every event (e.g. `"room"`).
    const TYPE: &'static str;

    type Command: Debug + Send + Sync + 'static;
    type Event: Debug + Clone + Serialize + Send + Sync + 'static;

    /// Validates `command` against the current state and returns the events it causes, or why it
    /// is refused. An empty list means the command is accepted and changes nothing.
    fn handle(
        &self,
        caller: &Caller,
        command: &Self::Command,
    ) -> Result<Vec<Self::Event>, Rejection>;

    /// Folds one event into the state. Must accept every event `handle` ever produced.
    fn apply(&mut self, event: &Self::Event);

    fn encode(event: &Self::Event) -> EncodedEvent;

    fn decode(
        event_type: &str,
        schema_version: u32,
        payload: &[u8],
    ) -> Result<Self::Event, DecodeError>;
}
