//! The AgentCom wire contract: the `agentcom.v1` protobuf package and its generated code.
//!
//! Nothing else lives here. `agentcom_types::wire` converts these messages into the domain
//! types (`TryFrom`, validating as they go); core logic never sees them. The gRPC service stubs
//! come with the `grpc` feature.

/// Generated code for `agentcom.v1`.
pub mod v1 {
    #![allow(unreachable_pub, clippy::all, rust_2018_idioms)]
    // Reason: generated code; its style is prost's, not ours.
    include!(concat!(env!("OUT_DIR"), "/agentcom.v1.rs"));
}
