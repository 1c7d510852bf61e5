//! The one place where write-side errors become gRPC statuses.
//!
//! A failure to decide (the journal unreachable or failing, a bug) is never shown to the client
//! as it is: its text can carry SQL, table ARNs or account ids. The client gets a fixed message
//! with an error id (also in the `x-kiroku-error-id` trailer); the detail is logged under it.

use std::fmt::Display;

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::runtime::CommandError;

/// Trailer naming the aggregate's actual version on an ABORTED conflict.
pub const ACTUAL_VERSION: &str = "x-kiroku-actual-version";
/// Trailer set on a rejection that was decided before under the same command id.
pub const DUPLICATE: &str = "x-kiroku-duplicate";
/// Trailer with the id under which a failure's detail was logged.
pub const ERROR_ID: &str = "x-kiroku-error-id";

/// What a client may read about a command error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Public {
    pub message: String,
    /// Set for failures whose detail went to the log only.
    pub error_id: Option<String>,
}

/// The client's view of `e`: decisions and refusals as they are; failures (INTERNAL,
/// UNAVAILABLE) logged with a fresh error id and told as a fixed message naming it.
pub fn public(e: &CommandError) -> Public {
    match e {
        CommandError::Internal(detail) | CommandError::Unavailable(detail) => {
            hidden(e.code(), detail)
        }
        _ => Public {
            message: e.to_string(),
            error_id: None,
        },
    }
}

fn hidden(code: Code, detail: &dyn Display) -> Public {
    let mut id = uuid::Uuid::new_v4().simple().to_string();
    id.truncate(16);
    tracing::error!(error_id = %id, code = ?code, error = %detail, "write api: request failed");
    let message = if code == Code::Unavailable {
        format!(
            "the service is unavailable right now; retry later (resending the same command id is \
             safe) (id {id})"
        )
    } else {
        format!("internal error (id {id}); the server's log has the details")
    };
    Public {
        message,
        error_id: Some(id),
    }
}

fn with_id(code: Code, public: Public) -> Status {
    let mut status = Status::new(code, public.message);
    if let Some(id) = public
        .error_id
        .and_then(|id| MetadataValue::try_from(id).ok())
    {
        status.metadata_mut().insert(ERROR_ID, id);
    }
    status
}

pub fn from_command_error(e: &CommandError) -> Status {
    let mut status = with_id(e.code(), public(e));
    match e {
        CommandError::Conflict { actual, .. } => {
            status
                .metadata_mut()
                .insert(ACTUAL_VERSION, MetadataValue::from(*actual));
        }
        CommandError::Rejected {
            duplicate: true, ..
        } => {
            status
                .metadata_mut()
                .insert(DUPLICATE, MetadataValue::from_static("true"));
        }
        _ => {}
    }
    status
}

impl From<CommandError> for Status {
    fn from(e: CommandError) -> Self {
        from_command_error(&e)
    }
}

pub fn journal(e: kiroku_journal::JournalError) -> Status {
    from_command_error(&e.into())
}

/// INTERNAL for a failure of our own (e.g. a state that cannot be serialized), detail logged.
pub fn internal(detail: impl Display) -> Status {
    with_id(Code::Internal, hidden(Code::Internal, &detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_reach_clients_as_a_fixed_message_with_an_error_id_in_text_and_trailer() {
        let arn =
            "journal unavailable: arn:aws:dynamodb:eu-west-1:123456789012:table/kiroku_events";
        for e in [
            CommandError::Unavailable(arn.into()),
            CommandError::Internal(format!("journal storage error: {arn}")),
        ] {
            let status = from_command_error(&e);
            assert_eq!(status.code(), e.code());
            assert!(!status.message().contains("123456789012"), "{status:?}");
            let id = status.metadata().get(ERROR_ID).unwrap().to_str().unwrap();
            assert_eq!(id.len(), 16);
            assert!(
                status.message().contains(&format!("(id {id})")),
                "{status:?}"
            );
        }
        let status = internal("serde: key must be a string");
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("serde"), "{status:?}");
    }

    #[test]
    fn decisions_and_refusals_keep_their_own_message() {
        let e = CommandError::Conflict {
            expected: 3,
            actual: 5,
        };
        let status = from_command_error(&e);
        assert_eq!(status.message(), e.to_string());
        assert!(status.metadata().get(ERROR_ID).is_none());
        assert_eq!(status.metadata().get(ACTUAL_VERSION).unwrap(), "5");
        let e = CommandError::Overloaded("1000 commands are already waiting; retry later".into());
        assert_eq!(public(&e).message, e.to_string());
    }
}
