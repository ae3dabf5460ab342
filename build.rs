//! Compiles the public protobuf contract in `proto/` into Rust.
//!
//! `protoc` comes from the `protoc-bin-vendored` crate so that a fresh machine
//! builds with `cargo` alone, and the file descriptor set is kept for gRPC
//! reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/switchyard/v1/resources.proto",
        "proto/switchyard/v1/operator.proto",
        "proto/switchyard/v1/agent.proto",
        "proto/switchyard/v1/token.proto",
    ];

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Maps become BTreeMaps so a message always encodes to the same bytes,
    // which the store relies on to tell "unchanged" from "configured".
    config.btree_map(["."]);

    tonic_prost_build::configure()
        // Smaller per-stream buffers than tonic's default (see src/codec.rs).
        .codec_path("crate::codec::Codec")
        .file_descriptor_set_path(out.join("switchyard_descriptor.bin"))
        .compile_with_config(config, &protos, &["proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
