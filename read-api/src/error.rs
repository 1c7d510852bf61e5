//! The read API's errors, and the one place they become gRPC statuses and HTTP responses.

use axum::http::StatusCode;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// Trailer (gRPC) and header (HTTP) naming the version a view has applied when a consistency
/// wait ran out.
pub const APPLIED_VERSION: &str = "x-kiroku-applied-version";

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
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
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
}

impl From<ReadError> for Status {
    fn from(e: ReadError) -> Self {
        if matches!(e, ReadError::Internal(_) | ReadError::Unavailable(_)) {
            tracing::warn!(error = %e, "read api: query failed");
        }
        let mut status = Status::new(e.code(), e.to_string());
        if let Some(applied) = e.applied_version() {
            status
                .metadata_mut()
                .insert(APPLIED_VERSION, MetadataValue::from(applied));
        }
        status
    }
}

impl axum::response::IntoResponse for ReadError {
    fn into_response(self) -> axum::response::Response {
        if matches!(self, ReadError::Internal(_) | ReadError::Unavailable(_)) {
            tracing::warn!(error = %self, "read api: query failed");
        }
        let body = serde_json::json!({
            "code": code_name(self.code()),
            "message": self.to_string(),
        });
        let mut response = (self.http_status(), axum::Json(body)).into_response();
        if let Some(applied) = self.applied_version() {
            response
                .headers_mut()
                .insert(APPLIED_VERSION, applied.into());
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
        Code::Unavailable => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}
