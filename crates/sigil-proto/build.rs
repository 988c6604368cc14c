//! Compiles the .proto files with protox (pure Rust; no `protoc` needed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // The control plane: tonic's default codec.
    let fds = protox::compile(["proto/sigil_auth.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    // What the agent serves to every workload, one long-lived stream each:
    // small buffers (src/codec.rs).
    let fds = protox::compile(
        [
            "proto/workload.proto",
            "proto/envoy/sds.proto",
            "proto/envoy/tls_types.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(fds)?;
    Ok(())
}
