//! gRPC types of the EnvProxy agent's admin API, package `envproxy.admin.v1`, generated from
//! `proto/envproxy/admin/v1/admin.proto`.
//!
//! The API has its own crate so that the `envproxy-proto` crate, which the preload library
//! links, stays free of tonic and prost.

/// Messages, the `Admin` client and the `Admin` server trait.
pub mod v1 {
    tonic::include_proto!("envproxy.admin.v1");
}

/// Encoded `FileDescriptorSet` of the admin API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("admin_descriptor");
