//! The plain types AgentCom's hub, sidecar and `hubctl` share, and their one conversion to and
//! from the wire contract.
//!
//! - [`domain`]: tasks, their specs, outcomes, lanes, tiers and states, and the validation every
//!   submitted spec passes.
//! - [`agent`]: the agent state machine's transition table.
//! - [`fleet`]: resource readings, GPUs, LLM endpoints and models, and the hub's views.
//! - [`link`]: the link protocol between the hub and a sidecar: hello, welcome, assignments and
//!   the messages each way.
//! - [`wire`]: `agentcom.v1` messages to and from the above, validating what comes in.
//! - [`json`]: the JSON submit format (`POST /api/v1/tasks`, `hubctl submit --from-file`).
//!
//! **Architecture Invariant:** no I/O, no runtime (no tokio, tonic or redb), no clock except
//! [`domain::now_ms`], which pure code takes as an argument instead of calling.

pub mod agent;
pub mod domain;
pub mod fleet;
pub mod json;
pub mod link;
pub mod wire;
