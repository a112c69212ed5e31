//! The AgentCom wire contract: the `agentcom.v1` protobuf package and its generated code.
//!
//! Nothing else lives here. `agentcom_types::wire` converts these messages into the domain
//! types (`TryFrom`, validating as they go); core logic never sees them. The gRPC service stubs
//! come with the `grpc` feature.
//!
//! The generated code is checked in, so that a build compiles no protobuf compiler;
//! `tests/generated.rs` fails when it no longer matches the `.proto` files and says how to make
//! it again.

/// Generated code for `agentcom.v1`.
pub mod v1 {
    #![allow(unreachable_pub, clippy::all, rust_2018_idioms)]
    // Reason: generated code; its style is prost's, not ours.
    include!("generated/agentcom.v1.rs");
}
