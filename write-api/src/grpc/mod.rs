//! The gRPC face of the write side: commands, command results and the audit history, behind
//! bearer-token authentication, with health and reflection services.

mod commands;
mod history;
mod server;
mod status;

pub use commands::{CommandApi, ProjectionWait};
pub use history::HistoryApi;
pub use kiroku_proto::auth::{Auth, AuthConfigError, Identity, PRINCIPAL_HEADER};
pub use server::{WriteApi, WriteApiConfig};
