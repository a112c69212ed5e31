//! The parts of a service (long-running work with ports and probes, issue 27) that decide
//! without doing: which ports a service gets and how they reach it, when a probe's results make
//! it ready or unhealthy, and when a service that ended starts again. The runner that starts
//! services, calls the probes and keeps the ports is built on these; they do no I/O but binding
//! a port to find it free.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

/// The ports this sidecar's running services hold: no two services get one port.
#[derive(Debug, Default)]
pub struct PortBook {
    held: BTreeSet<u16>,
}

/// A service's ports by name, in the order it asked for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ports(pub Vec<(String, u16)>);

impl Ports {
    /// The variables that give the ports to the service: `PORT` (the first) and `PORT_<NAME>`
    /// for each (the name upper-cased, anything but letters and digits as `_`).
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        if let Some((_, first)) = self.0.first() {
            env.insert("PORT".to_owned(), first.to_string());
        }
        for (name, port) in &self.0 {
            let name: String =
                name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
            env.insert(format!("PORT_{name}"), port.to_string());
        }
        env
    }
}

/// Why ports could not be had.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortError {
    #[error("port name {0:?} is asked for twice")]
    Duplicate(String),
    #[error("a port name is 1 to 32 letters, digits, '-' or '_': {0:?}")]
    BadName(String),
    #[error("no free port: {0}")]
    NoneFree(String),
}

/// Tries to find a port the operating system says is free and no service here holds.
const TRIES: usize = 64;

impl PortBook {
    /// Free ports for `names`, held until [`PortBook::release`]. A port is free when binding
    /// it on loopback succeeds and no service of this sidecar holds it; the bind is let go at
    /// once, so another program could take it before the service binds it: the service's
    /// readiness probe then fails and says so.
    pub fn reserve(&mut self, names: &[String]) -> Result<Ports, PortError> {
        let mut seen = BTreeSet::new();
        for name in names {
            let ok = !name.is_empty()
                && name.len() <= 32
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err(PortError::BadName(name.clone()));
            }
            if !seen.insert(name.to_ascii_uppercase().replace('-', "_")) {
                return Err(PortError::Duplicate(name.clone()));
            }
        }
        let mut got = Vec::new();
        for name in names {
            let port = (0..TRIES)
                .find_map(|_| {
                    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ok()?.local_addr().ok()?.port();
                    (!self.held.contains(&port) && !got.iter().any(|(_, p)| *p == port)).then_some(port)
                })
                .ok_or_else(|| PortError::NoneFree(format!("{TRIES} tries for {name}")))?;
            got.push((name.clone(), port));
        }
        self.held.extend(got.iter().map(|(_, p)| *p));
        Ok(Ports(got))
    }

    /// Gives the ports back, once their service has ended.
    pub fn release(&mut self, ports: &Ports) {
        for (_, port) in &ports.0 {
            self.held.remove(port);
        }
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// How often and how patiently a probe is called, as Kubernetes' probes are set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTiming {
    /// Failures before this much time has passed since the start do not count.
    pub start_period: Duration,
    pub interval: Duration,
    /// A call that takes longer has failed.
    pub timeout: Duration,
    /// Failures in a row that make it unhealthy.
    pub failure_threshold: u32,
}

impl Default for ProbeTiming {
    fn default() -> ProbeTiming {
        ProbeTiming {
            start_period: Duration::from_secs(30),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            failure_threshold: 3,
        }
    }
}

/// Where a service stands by its probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Not ready yet.
    Starting,
    Ready,
    /// Was ready; its liveness probe failed `failure_threshold` times in a row.
    Unhealthy,
    /// Never became ready: failures counted past its start period reached the threshold.
    NeverReady,
}

/// Follows a service's probe results: ready at the first success, unhealthy (once ready) or
/// never ready (before) after `failure_threshold` failures in a row that count. Times are from
/// the service's start.
#[derive(Debug)]
pub struct ProbeTracker {
    timing: ProbeTiming,
    health: Health,
    failures: u32,
    /// What the last failure said: kept for the report of a service that never became ready.
    pub last_evidence: Option<String>,
}

impl ProbeTracker {
    pub fn new(timing: ProbeTiming) -> ProbeTracker {
        ProbeTracker { timing, health: Health::Starting, failures: 0, last_evidence: None }
    }

    /// A tracker for a service that is ready already (its liveness probe's).
    pub fn ready(timing: ProbeTiming) -> ProbeTracker {
        ProbeTracker { health: Health::Ready, ..ProbeTracker::new(timing) }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// A probe call made `at` after the start ended: succeeded, or failed saying `evidence`.
    /// Returns the health after it.
    pub fn record(&mut self, at: Duration, result: Result<(), String>) -> Health {
        if matches!(self.health, Health::NeverReady) {
            return self.health;
        }
        match result {
            Ok(()) => {
                self.failures = 0;
                self.health = Health::Ready;
            }
            Err(evidence) => {
                self.last_evidence = Some(evidence);
                let counts = self.health != Health::Starting || at >= self.timing.start_period;
                if counts {
                    self.failures += 1;
                }
                if self.failures >= self.timing.failure_threshold.max(1) {
                    self.health = if self.health == Health::Starting { Health::NeverReady } else { Health::Unhealthy };
                }
            }
        }
        self.health
    }
}

/// When a service that ended (or was found unhealthy) starts again: never, or on failure with a
/// backoff that doubles from `backoff_base` to `backoff_max`, at most `limit` times. A service
/// that ran `stable_after` before it ended starts its count again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    pub on_failure: bool,
    pub limit: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub stable_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> RestartPolicy {
        RestartPolicy {
            on_failure: true,
            limit: 5,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            stable_after: Duration::from_secs(60),
        }
    }
}

/// What to do once a service has ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Start it again after this wait; the count of restarts so far, this one included.
    Restart { after: Duration, count: u32 },
    /// It stays ended, for this reason.
    Stop(String),
}

/// The restarts of one service.
#[derive(Debug)]
pub struct Restarts {
    policy: RestartPolicy,
    count: u32,
}

impl Restarts {
    pub fn new(policy: RestartPolicy) -> Restarts {
        Restarts { policy, count: 0 }
    }

    /// The service ended after running `ran`; `failed` when it exited other than by a stop
    /// asked for (a non-zero exit, a signal, an unhealthy verdict).
    pub fn ended(&mut self, ran: Duration, failed: bool) -> Next {
        if !failed {
            return Next::Stop("it exited 0".to_owned());
        }
        if !self.policy.on_failure {
            return Next::Stop("it failed, and its restart policy is never".to_owned());
        }
        if ran >= self.policy.stable_after {
            self.count = 0;
        }
        if self.count >= self.policy.limit {
            return Next::Stop(format!("it failed after {} restarts, its limit", self.count));
        }
        let doubling = 2u32.saturating_pow(self.count.min(30));
        let after = self.policy.backoff_base.saturating_mul(doubling).min(self.policy.backoff_max);
        self.count += 1;
        Next::Restart { after, count: self.count }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn two_services_never_share_a_port_and_a_port_is_free_again_once_released() {
        let mut book = PortBook::default();
        let web = book.reserve(&names(&["web", "admin"])).unwrap();
        let other = book.reserve(&names(&["web"])).unwrap();
        let mut all: Vec<u16> = web.0.iter().chain(&other.0).map(|(_, p)| *p).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 3, "three distinct ports: {web:?} {other:?}");
        assert_eq!(book.held(), 3);
        let env = web.env();
        assert_eq!(env["PORT"], web.0[0].1.to_string(), "PORT is the first");
        assert_eq!(env["PORT_WEB"], web.0[0].1.to_string());
        assert_eq!(env["PORT_ADMIN"], web.0[1].1.to_string());
        book.release(&web);
        assert_eq!(book.held(), 1);
        assert_eq!(book.reserve(&[]).unwrap().env(), BTreeMap::new(), "no ports, no PORT");
    }

    #[test]
    fn port_names_are_checked() {
        let mut book = PortBook::default();
        assert_eq!(book.reserve(&names(&["web", "WEB"])), Err(PortError::Duplicate("WEB".into())));
        assert_eq!(book.reserve(&names(&["a-b", "a_b"])), Err(PortError::Duplicate("a_b".into())), "one variable");
        assert_eq!(book.reserve(&names(&["no space"])), Err(PortError::BadName("no space".into())));
        assert_eq!(book.held(), 0, "nothing is held after a refusal");
        let dashed = book.reserve(&names(&["grpc-api"])).unwrap();
        assert!(dashed.env().contains_key("PORT_GRPC_API"));
    }

    #[test]
    fn failures_in_the_start_period_do_not_count_and_the_first_success_is_ready() {
        let timing =
            ProbeTiming { start_period: Duration::from_secs(10), failure_threshold: 3, ..ProbeTiming::default() };
        let mut probe = ProbeTracker::new(timing);
        for second in [1, 3, 5, 7, 9] {
            let health = probe.record(Duration::from_secs(second), Err("connection refused".into()));
            assert_eq!(health, Health::Starting, "at {second} s, inside the start period");
        }
        assert_eq!(probe.record(Duration::from_secs(11), Ok(())), Health::Ready);
        // Ready: a failure or two is tolerated, the threshold is not.
        assert_eq!(probe.record(Duration::from_secs(13), Err("503".into())), Health::Ready);
        assert_eq!(probe.record(Duration::from_secs(15), Ok(())), Health::Ready, "a success resets the count");
        for second in [17, 19] {
            assert_eq!(probe.record(Duration::from_secs(second), Err("503".into())), Health::Ready);
        }
        assert_eq!(probe.record(Duration::from_secs(21), Err("timed out after 2 s".into())), Health::Unhealthy);
        assert_eq!(probe.last_evidence.as_deref(), Some("timed out after 2 s"));
    }

    #[test]
    fn a_service_that_never_answers_past_its_start_period_is_never_ready_with_the_last_evidence() {
        let timing =
            ProbeTiming { start_period: Duration::from_secs(4), failure_threshold: 2, ..ProbeTiming::default() };
        let mut probe = ProbeTracker::new(timing);
        assert_eq!(probe.record(Duration::from_secs(2), Err("refused".into())), Health::Starting);
        assert_eq!(probe.record(Duration::from_secs(4), Err("refused".into())), Health::Starting);
        assert_eq!(probe.record(Duration::from_secs(6), Err("GET /health: 500".into())), Health::NeverReady);
        assert_eq!(probe.record(Duration::from_secs(8), Ok(())), Health::NeverReady, "final");
        assert_eq!(probe.last_evidence.as_deref(), Some("GET /health: 500"));
    }

    #[test]
    fn restarts_back_off_up_to_their_limit_and_a_stable_run_starts_the_count_again() {
        let policy = RestartPolicy {
            limit: 3,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(1),
            stable_after: Duration::from_secs(30),
            ..RestartPolicy::default()
        };
        let mut restarts = Restarts::new(policy);
        let short = Duration::from_secs(1);
        assert_eq!(restarts.ended(short, true), Next::Restart { after: Duration::from_millis(500), count: 1 });
        assert_eq!(restarts.ended(short, true), Next::Restart { after: Duration::from_secs(1), count: 2 });
        assert_eq!(restarts.ended(short, true), Next::Restart { after: Duration::from_secs(1), count: 3 }, "capped");
        assert!(matches!(restarts.ended(short, true), Next::Stop(why) if why.contains("3 restarts")));
        // A run long enough to be stable forgives the restarts before it.
        assert_eq!(
            restarts.ended(Duration::from_secs(31), true),
            Next::Restart { after: Duration::from_millis(500), count: 1 }
        );
        assert!(matches!(restarts.ended(short, false), Next::Stop(why) if why.contains("exited 0")));
        let never = Restarts::new(RestartPolicy { on_failure: false, ..policy }).ended(short, true);
        assert!(matches!(never, Next::Stop(why) if why.contains("never")));
    }
}
