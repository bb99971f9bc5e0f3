//! The Quiver gRPC API (`quiver.v1`): generated messages, clients and servers. No logic lives here.
#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::wildcard_enum_match_arm)]

/// `quiver.v1`: generated from `proto/quiver/v1/quiver.proto`.
pub mod v1 {
    tonic::include_proto!("quiver.v1");
}

/// `quiver.internal.v1`: node-to-node replication traffic (not a public API).
pub mod internal {
    tonic::include_proto!("quiver.internal.v1");
}

/// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("quiver_descriptor");
