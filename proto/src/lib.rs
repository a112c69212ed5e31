//! The AgentCom wire contract: the `agentcom.v1` protobuf package and its generated code.
//!
//! Nothing else lives here. The hub and the sidecar convert these types into their own domain
//! types at their gRPC/HTTP edges (`TryFrom`, validating as they go); core logic never sees them.

/// Generated code for `agentcom.v1`.
pub mod v1 {
    #![allow(unreachable_pub, clippy::all, rust_2018_idioms)]
    // Reason: generated code; its style is prost's, not ours.
    tonic::include_proto!("agentcom.v1");
}
