//! The read API: the projected views, served over gRPC (`kiroku.v1.ReadService`) and HTTP/JSON
//! from one query layer.
//!
//! * [`ReadQueries`] validates, waits for consistency tokens (read-your-writes, bounded) and
//!   reads the active version of the views.
//! * [`grpc`] and [`http`] are the two faces; [`error`] is the one place errors become gRPC
//!   codes and HTTP statuses.
//! * [`ReadLimits`] caps consistency waits and live streams, per principal and in total
//!   ([`Limiter`]); beyond them RESOURCE_EXHAUSTED (HTTP 429).
//! * [`LiveStreams`] pushes a room's view changes as they are projected (gRPC server stream and
//!   Server-Sent Events), each change once, in order, resumable by version.
//! * [`ReadApi`] assembles them; `kiroku dev` mounts its gRPC routes on the write API's port.

mod error;
pub mod grpc;
pub mod http;
mod limits;
mod live;
mod query;
mod server;

pub use error::{APPLIED_VERSION, ERROR_ID, PublicError, ReadError};
pub use limits::{
    Caps, DEFAULT_MAX_STREAMS, DEFAULT_MAX_STREAMS_PER_PRINCIPAL, DEFAULT_MAX_WAITS,
    DEFAULT_MAX_WAITS_PER_PRINCIPAL, Limiter, Permit, ReadLimits, Refused,
};
pub use live::{LiveStreams, RoomUpdate};
pub use query::{
    ConsistencyToken, DEFAULT_CONSISTENCY_WAIT, Head, MAX_CONSISTENCY_WAIT, ProjectionStatus,
    ReadQueries,
};
pub use server::{ReadApi, ServeError};
