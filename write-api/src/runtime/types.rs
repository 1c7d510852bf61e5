use kiroku_core::{Caller, Rejection, RejectionKind};
use kiroku_journal::{CommandOutcome, CommandRecord, JournalError, StreamId};
use tonic::Code;

/// What travels with every command besides its payload.
#[derive(Debug, Clone)]
pub struct CommandMeta {
    /// Idempotency key, scoped by the caller's principal.
    pub command_id: String,
    pub caller: Caller,
    pub expected_version: Option<u64>,
    pub correlation_id: String,
    pub causation_id: String,
}

/// A command that was carried out (now, or before: `duplicate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    pub stream: StreamId,
    /// The aggregate's version after the command.
    pub version: u64,
    pub first_sequence: u64,
    pub last_sequence: u64,
    /// The command id had been decided before; this is the original result, nothing was appended.
    pub duplicate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Refused by the aggregate's rules (or, for a resent id, by an earlier decision). Nothing was
    /// appended.
    #[error("{message}")]
    Rejected {
        code: Code,
        message: String,
        duplicate: bool,
    },
    /// The command named an expected version the aggregate is not at. Nothing was appended.
    #[error("expected version {expected} but the aggregate is at version {actual}")]
    Conflict { expected: u64, actual: u64 },
    /// Too many commands are queued (for this aggregate or in total); retry later.
    #[error("{0}")]
    Overloaded(String),
    /// The journal could not be reached or the service is stopping. Nothing acknowledged was lost;
    /// resending the same command id is safe.
    #[error("{0}")]
    Unavailable(String),
    /// A bug: the handler panicked or an event could not be decoded. The aggregate is reloaded
    /// from the journal before its next command.
    #[error("{0}")]
    Internal(String),
}

impl CommandError {
    pub fn rejected(r: Rejection) -> Self {
        let code = match r.kind {
            RejectionKind::NotFound => Code::NotFound,
            RejectionKind::AlreadyExists => Code::AlreadyExists,
            RejectionKind::InvalidArgument => Code::InvalidArgument,
            RejectionKind::FailedPrecondition => Code::FailedPrecondition,
        };
        CommandError::Rejected {
            code,
            message: r.message,
            duplicate: false,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            CommandError::Rejected { code, .. } => *code,
            CommandError::Conflict { .. } => Code::Aborted,
            CommandError::Overloaded(_) => Code::ResourceExhausted,
            CommandError::Unavailable(_) => Code::Unavailable,
            CommandError::Internal(_) => Code::Internal,
        }
    }

    /// Whether this is a decision about the command (kept for its id) rather than a failure to
    /// decide (after which the same id may be resent).
    pub fn is_decision(&self) -> bool {
        matches!(
            self,
            CommandError::Rejected { .. } | CommandError::Conflict { .. }
        )
    }
}

impl From<JournalError> for CommandError {
    fn from(e: JournalError) -> Self {
        match e {
            JournalError::Conflict {
                expected, actual, ..
            } => CommandError::Conflict { expected, actual },
            JournalError::TooLarge { .. } => CommandError::Rejected {
                code: Code::InvalidArgument,
                message: e.to_string(),
                duplicate: false,
            },
            JournalError::Unavailable(_) | JournalError::Closed => {
                CommandError::Unavailable(e.to_string())
            }
            JournalError::Unsupported(_) | JournalError::Storage(_) => {
                CommandError::Internal(e.to_string())
            }
        }
    }
}

/// The stored decision for a command, as the caller sees it.
pub fn outcome_of(record: &CommandRecord, duplicate: bool) -> Result<Executed, CommandError> {
    match &record.outcome {
        CommandOutcome::Succeeded {
            version,
            first_sequence,
            last_sequence,
        } => Ok(Executed {
            stream: record.stream.clone(),
            version: *version,
            first_sequence: *first_sequence,
            last_sequence: *last_sequence,
            duplicate,
        }),
        CommandOutcome::Rejected { code, message } => Err(CommandError::Rejected {
            code: Code::from_i32(*code),
            message: message.clone(),
            duplicate,
        }),
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
