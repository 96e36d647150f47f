//! Compiles `proto/envproxy/admin/v1/admin.proto` with protox, a protobuf compiler in Rust, so
//! the build needs no system `protoc`. The file descriptor set is also written to `OUT_DIR` for
//! gRPC server reflection.

use std::path::PathBuf;

const PROTO_ROOT: &str = "../proto";
const ADMIN_PROTO: &str = "../proto/envproxy/admin/v1/admin.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={ADMIN_PROTO}");
    let descriptors = protox::compile([ADMIN_PROTO], [PROTO_ROOT])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("admin_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
