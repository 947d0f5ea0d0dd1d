//! Generated protobuf and gRPC code of the gpush push API.
//!
//! - [`v1`]: package `gpush.v1`, service `Push`: `PushData`, `PushBatch`,
//!   `History`, and the server API (`Disconnect`, `Logout`, `Subscribe`,
//!   `Unsubscribe`, `Presence`, `PresenceStats`, `Online`, `Topics`).
//! - [`order`]: package `order`, service `Proxy` with `PushData`: the original
//!   Go gpush method, kept so existing callers work unchanged.
//! - [`FILE_DESCRIPTOR_SET`]: both files, for gRPC server reflection.

/// Package `gpush.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("gpush.v1");
}

/// Package `order`: the original gpush API.
#[allow(missing_docs, clippy::all)]
pub mod order {
    tonic::include_proto!("order");
}

/// Encoded `FileDescriptorSet` of every proto in this crate, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("gpush_descriptor");
