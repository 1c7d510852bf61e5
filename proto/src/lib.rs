//! kiroku's public protobuf contract.
//!
//! * [`chat::v1`]: the reference domain's events, as stored in the journal.
//! * [`v1`] (feature `grpc`): the gRPC services and their messages.
//! * [`auth`] and [`codec`] (feature `grpc`): what every kiroku service does at its edge — bearer
//!   tokens, and the codec with precise errors for malformed or oversized requests.
//!
//! Everything here is generated from the `.proto` files beside this crate; protobuf types stop at
//! the edges of the system, inside it works with domain types.

pub mod chat {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/kiroku.chat.v1.rs"));
    }
}

#[cfg(feature = "grpc")]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/kiroku.v1.rs"));
}

#[cfg(feature = "grpc")]
pub mod auth;
#[cfg(feature = "grpc")]
pub mod codec;

/// The encoded `FileDescriptorSet` of every message and service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kiroku_descriptor.bin"));

/// Adds gRPC server reflection over every kiroku service and the health service to `routes`, in
/// both protocol versions: `grpc.reflection.v1` (grpcurl, Postman) and `grpc.reflection.v1alpha`
/// (Google's Python grpcio-reflection client and older tools, which speak only that one). Every
/// server mounts reflection through this function (`grpcurl -plaintext HOST:PORT list`).
#[cfg(feature = "grpc")]
pub fn with_reflection(routes: tonic::service::Routes) -> tonic::service::Routes {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let valid = "the embedded descriptor sets are valid";
    routes
        .add_service(builder().build_v1().expect(valid))
        .add_service(builder().build_v1alpha().expect(valid))
}
