//! The adapter's errors, and how they become [`JournalError`]s.

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use kiroku_journal::JournalError;

/// What went wrong talking to DynamoDB.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DynamoDbError {
    /// Transient failures (throttling, timeouts, 5xx, connection refused) outlasted the retries.
    #[error("dynamodb {operation} failed after {attempts} attempts in {elapsed_ms} ms: {last}")]
    Unavailable {
        operation: &'static str,
        attempts: u32,
        elapsed_ms: u128,
        last: String,
    },
    /// DynamoDB refused the request for good (validation, missing table, access denied).
    #[error("dynamodb {operation} failed: {code}: {message}")]
    Service {
        operation: &'static str,
        code: String,
        message: String,
    },
    /// A stored item does not have the shape this adapter writes.
    #[error("{table} item {key} is malformed: {reason}")]
    Malformed {
        table: String,
        key: String,
        reason: String,
    },
    /// The configuration cannot work (a missing region, a bad url).
    #[error("dynamodb journal configuration: {0}")]
    Config(String),
    /// A table did not become ACTIVE in time, or exists with another key schema.
    #[error("table {table}: {reason}")]
    Table { table: String, reason: String },
}

impl From<DynamoDbError> for JournalError {
    fn from(e: DynamoDbError) -> Self {
        match e {
            DynamoDbError::Unavailable { .. } => JournalError::Unavailable(e.to_string()),
            _ => JournalError::Storage(e.to_string()),
        }
    }
}

/// Whether a failed attempt is worth another, and whether it may have been applied although it
/// failed (a timeout or lost response after the server received the request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    Transient {
        reason: String,
        possibly_applied: bool,
    },
    Permanent(DynamoDbError),
}

const THROTTLING: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "LimitExceededException",
];

const SERVER_SIDE: &[&str] = &[
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionInProgressException",
];

/// Classifies an SDK error. Service errors an operation handles itself (a failed condition, a
/// cancelled transaction) are matched by the caller before this.
pub(crate) fn classify<E>(operation: &'static str, err: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let transient = |reason: String, possibly_applied| Failure::Transient {
        reason,
        possibly_applied,
    };
    match err {
        SdkError::TimeoutError(_) => transient("attempt timed out".into(), true),
        SdkError::DispatchFailure(e) => {
            // A refused connection never reached the server; anything else may have.
            let reason = format!("{:?}", e.as_connector_error());
            let refused =
                reason.contains("ConnectionRefused") || reason.contains("onnection refused");
            transient(format!("request not delivered: {reason}"), !refused)
        }
        SdkError::ResponseError(e) => transient(format!("response lost: {e:?}"), true),
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = err.code().unwrap_or("unknown").to_owned();
            let message = err.message().unwrap_or_default().to_owned();
            if THROTTLING.contains(&code.as_str()) {
                transient(format!("throttled: {code}"), false)
            } else if status >= 500 || SERVER_SIDE.contains(&code.as_str()) {
                transient(format!("server error {status}: {code}: {message}"), true)
            } else {
                Failure::Permanent(DynamoDbError::Service {
                    operation,
                    code,
                    message,
                })
            }
        }
        other => Failure::Permanent(DynamoDbError::Service {
            operation,
            code: "client".into(),
            message: format!("{other:?}"),
        }),
    }
}
