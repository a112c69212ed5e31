//! Compiles the `agentcom.v1` contract with protox (pure Rust, no system `protoc`). The gRPC
//! service stubs are generated only with the `grpc` feature, so crates that need the messages
//! alone (`agentcom-types`) do not build tonic.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files =
        ["agentcom/v1/task.proto", "agentcom/v1/fleet.proto", "agentcom/v1/agent.proto", "agentcom/v1/admin.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure().build_server(grpc).build_client(grpc).compile_fds(descriptors)?;
    Ok(())
}
