//! Compiles the .proto files with protox (pure Rust; no `protoc` needed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/sigil_auth.proto",
        "proto/workload.proto",
        "proto/envoy/sds.proto",
        "proto/envoy/tls_types.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
