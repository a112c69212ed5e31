//! Compiles the hub's own storage format (`proto/agentcom/storage/v1/storage.proto`, messages
//! only) with protox: pure Rust, no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/agentcom/storage/v1/storage.proto";
    println!("cargo:rerun-if-changed={file}");
    let descriptors = protox::compile([file], ["proto"])?;
    tonic_prost_build::configure().build_server(false).build_client(false).btree_map(".").compile_fds(descriptors)?;
    Ok(())
}
