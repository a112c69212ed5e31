//! What the core answers sidecar sessions and submitters, beside the link protocol it speaks
//! with sidecars (`agentcom_types::link`). Below `handle` and `commit`, which both speak them.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

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

/// A request the loop took, by the id it was given: `State` answers it with an
/// `Action::Reply`, and the loop hands the answer to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub(crate) u64);

/// An answer on its way to its caller: typed by its [`Reply`] where it is made, and by the
/// caller's request where it is read.
pub type Answer = Box<dyn Any + Send>;

/// Who waits for an answer of type `T`: the request's id, typed by what it expects. Data only;
/// answering it is an action.
pub struct Reply<T> {
    pub(crate) id: RequestId,
    answer: PhantomData<fn(T)>,
}

impl<T> Clone for Reply<T> {
    fn clone(&self) -> Reply<T> {
        *self
    }
}

impl<T> Copy for Reply<T> {}

impl<T> std::fmt::Debug for Reply<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reply({})", self.id.0)
    }
}

impl<T: Send + 'static> Reply<T> {
    pub(crate) fn new(id: RequestId) -> Reply<T> {
        Reply { id, answer: PhantomData }
    }

    /// The answer, as it travels.
    pub(crate) fn with(self, value: T) -> (RequestId, Answer) {
        (self.id, Box::new(value))
    }
}

/// Someone waiting for a submit to become durable; `true` when their submit matched an
/// existing idempotency key.
pub(super) type SubmitWaiter = (Reply<Result<Submitted, Error>>, bool);
/// A submitter's answer, ready to go out once its submit is durable.
pub(super) type SubmitAnswer = (Reply<Result<Submitted, Error>>, Submitted);
