//! The crossenc.v1 gRPC API: messages, client and server stubs generated from
//! `proto/crossenc/v1/crossenc.proto`, with a protobuf codec whose encode and decode
//! times the server records ([`codec`]).

#![allow(clippy::derive_partial_eq_without_eq)]

pub mod codec;

pub mod v1 {
    tonic::include_proto!("crossenc.v1");

    /// The encoded `FileDescriptorSet`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/crossenc_descriptor.bin"));
}
