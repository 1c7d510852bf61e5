use std::fmt;

/// Identifies one aggregate's event stream: its type (e.g. `room`) and id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    pub aggregate_type: String,
    pub aggregate_id: String,
}

impl StreamId {
    pub fn new(aggregate_type: impl Into<String>, aggregate_id: impl Into<String>) -> Self {
        Self {
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.aggregate_type, self.aggregate_id)
    }
}

/// An event to append: what the aggregate produced, encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_type: String,
    pub schema_version: u32,
    /// Protobuf of `event_type`.
    pub payload: Vec<u8>,
}

/// Who caused a batch of events and why; stored with each of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventMetadata {
    pub command_id: String,
    pub correlation_id: String,
    pub causation_id: String,
    /// The authenticated principal that sent the command.
    pub principal: String,
    /// Milliseconds since the Unix epoch, when the command was decided.
    pub timestamp_ms: i64,
}

/// A stored event with everything known about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub stream: StreamId,
    /// Position in the stream: 1, 2, 3… dense, never reused.
    pub sequence: u64,
    /// Position in the journal's global commit order, where the backend has one (0 otherwise).
    pub global_position: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Vec<u8>,
    pub metadata: EventMetadata,
}

/// Appends `events` to `stream` if and only if its highest sequence number is
/// `expected_sequence`, and records the command as decided, all atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendRequest {
    pub stream: StreamId,
    pub expected_sequence: u64,
    /// May be empty: the command was accepted but changed nothing; only its record is written.
    pub events: Vec<NewEvent>,
    pub metadata: EventMetadata,
}

/// How a command was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Its events are stored as `first_sequence..=last_sequence` (both 0 when it had none) and the
    /// stream was then at `version`.
    Succeeded {
        version: u64,
        first_sequence: u64,
        last_sequence: u64,
    },
    /// Refused by the aggregate. `code` is the gRPC status code a caller got.
    Rejected { code: i32, message: String },
}

/// The decided result of one command, keyed by `(principal, command_id)`: the same id sent by two
/// principals names two commands, and nobody can read another principal's results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRecord {
    pub principal: String,
    pub command_id: String,
    pub stream: StreamId,
    pub outcome: CommandOutcome,
    pub recorded_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The events were appended; this is the command's record.
    Appended(CommandRecord),
    /// The command id was decided before; nothing was appended and this is the original record.
    Duplicate(CommandRecord),
}

impl AppendOutcome {
    pub fn record(&self) -> &CommandRecord {
        match self {
            AppendOutcome::Appended(r) | AppendOutcome::Duplicate(r) => r,
        }
    }
}

/// Aggregate state at `sequence`, encoded by a `SnapshotCodec`. A cache: it may always be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub stream: StreamId,
    pub sequence: u64,
    pub timestamp_ms: i64,
    pub state: Vec<u8>,
}
