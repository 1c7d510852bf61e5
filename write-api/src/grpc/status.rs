//! The one place where write-side errors become gRPC statuses.

use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::runtime::CommandError;

/// Trailer naming the aggregate's actual version on an ABORTED conflict.
pub const ACTUAL_VERSION: &str = "x-kiroku-actual-version";
/// Trailer set on a rejection that was decided before under the same command id.
pub const DUPLICATE: &str = "x-kiroku-duplicate";

pub fn from_command_error(e: &CommandError) -> Status {
    let mut status = Status::new(e.code(), e.to_string());
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
