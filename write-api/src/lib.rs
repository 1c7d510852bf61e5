//! kiroku's write side: the aggregate runtime ([`runtime`]) and the gRPC services that feed it
//! commands and show the audit history ([`grpc`]), plus the settings that assemble them.

pub mod grpc;
pub mod runtime;
