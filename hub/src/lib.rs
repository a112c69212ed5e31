//! The AgentCom hub: a durable priority queue of enriched tasks, the fleet of sidecars and
//! their agents, and the admin APIs.
//!
//! Start at [`server::run`]: it wires storage ([`store`]), the core actor ([`core`]) and the
//! gRPC/HTTP edges ([`api`]). Pure logic lives in [`queue`] and [`fleet`], and is tested
//! without a runtime; the shared types ([`domain`], [`agent`]) are `agentcom-types`'.

pub mod api;
pub mod auth;
pub mod core;
pub mod edge;
pub mod enrol;
pub mod feed;
pub mod fleet;
#[cfg(test)]
mod fuzz_tests;
pub mod metrics;
pub mod prices;
pub mod probe;
pub mod queue;
pub mod ratelimit;
pub mod sched;
pub mod server;
pub mod store;
pub mod usage;

pub use agentcom_types::{agent, domain, link};
pub use store::backup;
