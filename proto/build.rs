//! Generates the Rust code for kiroku's protobuf contract. `protoc` comes from the
//! `protoc-bin-vendored` crate, so building needs nothing installed by hand.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let grpc = env::var_os("CARGO_FEATURE_GRPC").is_some();

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    let mut protos = vec!["kiroku/chat/v1/events.proto"];
    if grpc {
        protos.push("kiroku/v1/write.proto");
        protos.push("kiroku/v1/read.proto");
    }
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .codec_path("crate::codec::KirokuCodec")
        .file_descriptor_set_path(out_dir.join("kiroku_descriptor.bin"))
        .compile_with_config(config, &protos, &["."])?;

    println!("cargo:rerun-if-changed=kiroku");
    Ok(())
}
