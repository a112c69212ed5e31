//! What the core answers sidecar sessions and submitters, beside the link protocol it speaks
//! with sidecars (`agentcom_types::link`). Below `handle` and `commit`, which both speak them.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use tokio::sync::oneshot;

use super::config::Error;
use crate::domain::*;
use crate::link::Welcome;

/// The core's answer to a hello: the welcome for the sidecar, and the session's liveness clock.
#[derive(Clone, Debug)]
pub struct Joined {
    /// When the sidecar was last heard from. The session stores into it on every message, so a
    /// plain heartbeat (no running tasks to renew) never has to reach the core.
    pub last_seen: Arc<AtomicI64>,
    pub welcome: Welcome,
}

#[derive(Clone, Debug)]
pub struct Submitted {
    pub task: Task,
    /// The idempotency key matched an existing task, which is returned instead.
    pub existing: bool,
}

pub(super) type Reply<T> = oneshot::Sender<T>;
/// Someone waiting for a submit to become durable; `true` when their submit matched an
/// existing idempotency key.
pub(super) type SubmitWaiter = (Reply<Result<Submitted, Error>>, bool);
/// A submitter's answer, ready to go out once its submit is durable.
pub(super) type SubmitAnswer = (Reply<Result<Submitted, Error>>, Submitted);
