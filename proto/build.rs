//! Compiles the `agentcom.v1` contract with protox (pure Rust, no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files =
        ["agentcom/v1/task.proto", "agentcom/v1/fleet.proto", "agentcom/v1/agent.proto", "agentcom/v1/admin.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
