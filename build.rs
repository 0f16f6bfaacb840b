//! Compiles the `poolplane.v1` protobuf API into Rust (client and server) and
//! writes the file descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A fresh machine has no system protoc; the vendored one keeps the build
    // self-contained. An explicit PROTOC still wins.
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/poolplane/v1/value.proto",
        "proto/poolplane/v1/pool_admin.proto",
        "proto/poolplane/v1/query.proto",
        "proto/poolplane/v1/events.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("poolplane_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
