//! The read API's errors, and the one place they become gRPC statuses and HTTP responses.
//!
//! A failure of a backend (the read store, the journal) is never shown to the client as it is:
//! its text can name tables, hosts or accounts. The client gets a fixed message with an error id;
//! the detail is logged under that id.

use axum::http::StatusCode;
use serde::Serialize;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::limits::Refused;

/// Trailer (gRPC) and header (HTTP) naming the version a view has applied when a consistency
/// wait ran out.
pub const APPLIED_VERSION: &str = "x-kiroku-applied-version";
/// Trailer (gRPC) and header (HTTP) with the id under which a backend failure's detail was
/// logged.
pub const ERROR_ID: &str = "x-kiroku-error-id";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error(
        "not yet consistent: the view has applied {aggregate_id} up to version {applied}, not yet \
         {wanted} (waited {waited_ms} ms); retry, or wait longer"
    )]
    NotYetConsistent {
        aggregate_id: String,
        wanted: u64,
        applied: u64,
        waited_ms: u64,
    },
    /// A cap on consistency waits or live streams is reached.
    #[error(transparent)]
    Exhausted(#[from] Refused),
    /// A backend is unreachable for now; the text is for the log only.
    #[error("{0}")]
    Unavailable(String),
    /// A backend failed; the text is for the log only.
    #[error("{0}")]
    Internal(String),
}

/// What a client is told about an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublicError {
    /// The gRPC code's canonical name (`NOT_FOUND`).
    pub code: &'static str,
    pub message: String,
    /// For backend failures: the id their detail was logged under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_id: Option<String>,
}

impl ReadError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ReadError::InvalidArgument(message.into())
    }

    pub fn code(&self) -> Code {
        match self {
            ReadError::InvalidArgument(_) => Code::InvalidArgument,
            ReadError::NotFound(_) => Code::NotFound,
            ReadError::Unauthenticated(_) => Code::Unauthenticated,
            ReadError::NotYetConsistent { .. } => Code::DeadlineExceeded,
            ReadError::Exhausted(_) => Code::ResourceExhausted,
            ReadError::Unavailable(_) => Code::Unavailable,
            ReadError::Internal(_) => Code::Internal,
        }
    }

    /// The HTTP status of the same error (as grpc-gateway maps the codes).
    pub fn http_status(&self) -> StatusCode {
        match self.code() {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn applied_version(&self) -> Option<u64> {
        match self {
            ReadError::NotYetConsistent { applied, .. } => Some(*applied),
            _ => None,
        }
    }

    /// What the client may see. A backend failure is logged here, with a fresh error id, and
    /// answered with a fixed message naming that id; every other error is its own message.
    pub fn public(&self) -> PublicError {
        let code = code_name(self.code());
        let (message, error_id) = match self {
            ReadError::Internal(detail) | ReadError::Unavailable(detail) => {
                let id = error_id();
                tracing::error!(error_id = %id, code, error = %detail, "read api: query failed");
                let message = if self.code() == Code::Internal {
                    format!("internal error (id {id}); the server's log has the details")
                } else {
                    format!("the read side is unavailable right now; retry later (id {id})")
                };
                (message, Some(id))
            }
            other => (other.to_string(), None),
        };
        PublicError {
            code,
            message,
            error_id,
        }
    }
}

/// A short random id to find a failure's detail in the log.
fn error_id() -> String {
    let mut id = uuid::Uuid::new_v4().simple().to_string();
    id.truncate(16);
    id
}

impl From<ReadError> for Status {
    fn from(e: ReadError) -> Self {
        let public = e.public();
        let mut status = Status::new(e.code(), public.message);
        if let Some(applied) = e.applied_version() {
            status
                .metadata_mut()
                .insert(APPLIED_VERSION, MetadataValue::from(applied));
        }
        if let Some(id) = public
            .error_id
            .and_then(|id| MetadataValue::try_from(id).ok())
        {
            status.metadata_mut().insert(ERROR_ID, id);
        }
        status
    }
}

impl axum::response::IntoResponse for ReadError {
    fn into_response(self) -> axum::response::Response {
        let public = self.public();
        let error_id = public.error_id.clone();
        let mut response = (self.http_status(), axum::Json(public)).into_response();
        let headers = response.headers_mut();
        if let Some(applied) = self.applied_version() {
            headers.insert(APPLIED_VERSION, applied.into());
        }
        if let Some(id) = error_id.and_then(|id| id.parse().ok()) {
            headers.insert(ERROR_ID, id);
        }
        if matches!(self, ReadError::Exhausted(_)) {
            headers.insert(axum::http::header::RETRY_AFTER, 1.into());
        }
        response
    }
}

/// The gRPC code's canonical name (`NOT_FOUND`), for JSON error bodies.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::NotFound => "NOT_FOUND",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::Unavailable => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_failures_reach_clients_as_a_fixed_message_with_an_error_id() {
        let sql = "read store error: no such table: rooms_v1";
        for e in [
            ReadError::Internal(sql.into()),
            ReadError::Unavailable(sql.into()),
        ] {
            let public = e.public();
            let id = public.error_id.clone().expect("an error id");
            assert_eq!(id.len(), 16);
            assert!(public.message.contains(&format!("(id {id})")), "{public:?}");
            assert!(!public.message.contains("rooms_v1"), "{public:?}");
            let status = Status::from(e.clone());
            assert_eq!(status.code(), e.code());
            assert!(!status.message().contains("no such table"), "{status:?}");
            let in_metadata = status.metadata().get(ERROR_ID).unwrap().to_str().unwrap();
            assert!(status.message().contains(in_metadata), "{status:?}");
        }
        // Every other error is for the client as it is.
        let e = ReadError::NotFound("room \"r9\" does not exist".into());
        assert_eq!(
            e.public(),
            PublicError {
                code: "NOT_FOUND",
                message: "room \"r9\" does not exist".into(),
                error_id: None
            }
        );
    }

    #[test]
    fn a_reached_cap_is_resource_exhausted_and_too_many_requests() {
        let e = ReadError::from(Refused::Total {
            what: "consistency waits",
            limit: 8,
        });
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert_eq!(e.http_status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.public().code, "RESOURCE_EXHAUSTED");
    }
}
