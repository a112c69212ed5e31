//! The core's decisions, tested without a store or a runtime: a [`Harness`] feeds events to a
//! [`State`] at times it chooses, commits every write at once, and keeps what was sent to each
//! sidecar. One test at the end runs the real loop against a real store.

use std::collections::HashMap;

use super::*;
use crate::agent::AgentState;
use crate::domain::{Exit, Outcome, RetryPolicy, SpecDefaults, TaskSpec, TaskState};

pub(super) const T0: UnixMs = 1_800_000_000_000;

mod harness;
use harness::{Harness, Taken};

fn shell() -> TaskSpec {
    TaskSpec::shell(vec!["true".into()], &SpecDefaults::default())
}

fn ms(duration: std::time::Duration) -> i64 {
    duration.as_millis() as i64
}

#[test]
fn a_submitted_task_is_assigned_once_durable_and_succeeds() {
    let mut hub = Harness::new();
    hub.join("s1", 1, Vec::new());
    let id = hub.submit(shell());
    assert_eq!(hub.assigned("s1"), vec![(id, 1)]);
    assert_eq!(hub.task(id).state, TaskState::Dispatched);
    hub.report("s1", FromSidecar::Started { task_id: id, lease_generation: 1, pid: 0 });
    assert_eq!(hub.task(id).state, TaskState::Running);
    hub.finish("s1", id, 1, 0);
    assert_eq!(hub.task(id).state, TaskState::Succeeded);
}

#[test]
fn messages_under_a_stale_generation_are_refused_and_their_work_stopped() {
    let config = Config::default();
    let mut hub = Harness::new();
    hub.join("s1", 1, Vec::new());
    let id = hub.submit(shell());
    // The sidecar goes away; its lease lapses and the task is retried, on the next sidecar.
    hub.leave("s1");
    hub.tick_at(T0 + ms(config.lease_ttl) + 1);
    assert_eq!(hub.task(id).state, TaskState::Queued, "{}", hub.task(id).state_reason);
    hub.join("s2", 1, Vec::new());
    hub.tick_at(hub.now + 3_000); // Past the retry backoff (at most 2 s for attempt 2).
    assert_eq!(hub.assigned("s2"), vec![(id, 2)]);
    // The first attempt reports late, from a new session: refused, and told to stop.
    hub.join("s1", 1, Vec::new());
    hub.finish("s1", id, 1, 0);
    assert_eq!(hub.task(id).state, TaskState::Dispatched, "the stale result changes nothing");
    assert!(hub.cancels("s1").contains(&(id, 1)));
    let stats = hub.ask(|reply| Event::Stats { reply });
    assert_eq!(stats.stale_messages_refused, 1);
    // The current holder's result counts.
    hub.finish("s2", id, 2, 0);
    assert_eq!(hub.task(id).state, TaskState::Succeeded);
}

#[test]
fn a_sidecar_that_reconnects_keeps_the_work_it_still_runs_and_loses_the_rest() {
    let mut hub = Harness::new();
    hub.join("s1", 2, Vec::new());
    let kept = hub.submit(shell());
    let dropped = hub.submit(shell());
    for id in [kept, dropped] {
        hub.report("s1", FromSidecar::Started { task_id: id, lease_generation: 1, pid: 0 });
    }
    hub.leave("s1");
    // Back within the lease TTL, still running one of them.
    hub.now += 1_000;
    hub.join("s1", 2, vec![RunningTask { task_id: kept, lease_generation: 1, agent_id: String::new() }]);
    let kept_task = hub.task(kept);
    assert_eq!((kept_task.state, kept_task.lease_generation), (TaskState::Running, 1));
    let agents = hub.ask(|reply| Event::Agents { reply });
    assert!(agents.iter().any(|a| a.task_id == Some(kept) && a.state == AgentState::Working), "{agents:?}");
    let lost = hub.task(dropped);
    assert_eq!(lost.state, TaskState::Queued);
    assert!(lost.state_reason.contains("sidecar restarted without it"), "{}", lost.state_reason);
    assert!(!hub.cancels("s1").contains(&(kept, 1)));
    // Its result is accepted under the lease it kept.
    hub.finish("s1", kept, 1, 0);
    assert_eq!(hub.task(kept).state, TaskState::Succeeded);
}

#[test]
fn a_retryable_exit_code_is_retried_until_the_attempts_run_out() {
    let mut hub = Harness::new();
    hub.join("s1", 1, Vec::new());
    let mut spec = shell();
    spec.limits.max_attempts = 2;
    spec.retry.retry_on_exit_codes = vec![75];
    let retried = hub.submit(spec);
    hub.finish("s1", retried, 1, 75);
    let task = hub.task(retried);
    assert_eq!(task.state, TaskState::Queued);
    assert!(task.state_reason.starts_with("retrying in "), "{}", task.state_reason);
    hub.tick_at(hub.now + 3_000);
    assert_eq!(hub.assigned("s1").last(), Some(&(retried, 2)));
    hub.finish("s1", retried, 2, 75);
    let task = hub.task(retried);
    assert_eq!((task.state, task.state_reason.as_str()), (TaskState::DeadLettered, "exit code 75 (attempt 2 of 2)"));

    // Any other failure of the command is final at once.
    let failed =
        hub.submit(TaskSpec { retry: RetryPolicy { retry_on_exit_codes: vec![75], ..shell().retry }, ..shell() });
    hub.finish("s1", failed, 1, 3);
    let task = hub.task(failed);
    assert_eq!((task.state, task.state_reason.as_str()), (TaskState::Failed, "exit code 3"));
}

#[test]
fn a_drain_deadline_requeues_what_still_runs_and_stops_it() {
    let mut hub = Harness::new();
    hub.join("s1", 1, Vec::new());
    let id = hub.submit(shell());
    hub.report("s1", FromSidecar::Started { task_id: id, lease_generation: 1, pid: 0 });
    let deadline = hub.now + 1_000;
    let host = hub.ask(|reply| Event::Drain { sidecar_id: "s1".into(), deadline: Some(deadline), reply }).unwrap();
    assert_eq!(host.cordon.map(|c| c.deadline_unix_ms), Some(Some(deadline)));
    hub.tick_at(deadline - 1);
    assert_eq!(hub.task(id).state, TaskState::Running, "before the deadline the work goes on");
    hub.tick_at(deadline);
    let task = hub.task(id);
    assert_eq!(task.state, TaskState::Queued);
    assert!(task.state_reason.contains("was drained during attempt 1"), "{}", task.state_reason);
    assert!(hub.cancels("s1").contains(&(id, 1)));
    // Nothing new goes to a cordoned sidecar; the task waits for another.
    hub.tick_at(deadline + 1_000);
    assert_eq!(hub.assigned("s1"), vec![(id, 1)]);
    hub.join("s2", 1, Vec::new());
    assert_eq!(hub.assigned("s2"), vec![(id, 2)]);
}

#[test]
fn dependencies_release_on_success_and_cascade_on_failure() {
    let mut hub = Harness::new();
    let first = hub.submit(shell());
    let after = |deps: Vec<TaskId>| TaskSpec { depends_on: deps, ..shell() };
    let second = hub.submit(after(vec![first]));
    let third = hub.submit(after(vec![second]));
    assert_eq!(hub.task(second).state, TaskState::Waiting);
    // Failing the first cancels the chain behind it.
    let cancelled = hub.ask(|reply| Event::Cancel { id: first, reason: String::new(), reply }).unwrap();
    assert_eq!(cancelled.state, TaskState::Cancelled);
    for id in [second, third] {
        let task = hub.task(id);
        assert_eq!(task.state, TaskState::Cancelled);
        assert!(task.state_reason.starts_with("dependency_failed: task "), "{}", task.state_reason);
    }
    // A success queues its dependent.
    let ok = hub.submit(shell());
    let next = hub.submit(after(vec![ok]));
    hub.join("s1", 1, Vec::new());
    hub.finish("s1", ok, 1, 0);
    assert_eq!(hub.assigned("s1"), vec![(ok, 1), (next, 1)]);
}

/// A submitter is answered from the writer thread, possibly before the core hears of the
/// commit. Whatever it asks next must still find the task, and a cancel that wins that race
/// must not be undone when the commit arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_submitter_asks_right_after_its_answer_sees_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("hub.redb")).unwrap();
    let (hub, core) = Core::start(Config::default(), &store).unwrap();
    let rounds = 200;
    for _ in 0..rounds {
        // Cancelled straight after the answer.
        let lone = hub.submit(shell()).await.unwrap().task;
        assert_eq!(hub.cancel(lone.id, String::new()).await.unwrap().state, TaskState::Cancelled);
        // Depended on straight after the answer, then cancelled, which cancels the dependent.
        let first = hub.submit(shell()).await.unwrap().task;
        let mut after = shell();
        after.depends_on = vec![first.id];
        assert_eq!(hub.submit(after).await.unwrap().task.state, TaskState::Waiting);
        assert_eq!(hub.cancel(first.id, String::new()).await.unwrap().state, TaskState::Cancelled);
    }
    let stats = hub.stats().await.unwrap();
    assert_eq!((stats.tasks, stats.ready, stats.waiting_on_dependencies), (3 * rounds, 0, 0), "{stats:?}");
    for task in hub.list(None, 3 * rounds).await.unwrap() {
        assert_eq!(task.state, TaskState::Cancelled, "{}: {}", task.id, task.state_reason);
    }
    hub.shutdown().await;
    core.await.unwrap();
}

/// A hub whose LLM work runs on `m` (standard) and Claude (complex), falling back after 1 s; a
/// local sidecar with `m` warm on Ollama and one slot, and a cloud sidecar with the Claude API.
fn llm_fleet() -> Harness {
    use crate::fleet::{Endpoint, EndpointKind, Model, Owner};
    let mut config = Config { tier_fallback_after: std::time::Duration::from_secs(1), ..Config::default() };
    config.tier_models.set("standard=m").unwrap();
    config.tier_models.set("complex=claude-sonnet-4-5").unwrap();
    let mut hub = Harness::with(config);
    for (sidecar, kind, url) in [
        ("local", EndpointKind::Ollama, "http://local:11434"),
        ("cloud", EndpointKind::Anthropic, "https://api.anthropic.com"),
    ] {
        hub.join(sidecar, 1, Vec::new());
        hub.runs_llm(sidecar);
        let mut endpoint = Endpoint::new(Owner::Sidecar(sidecar.into()), url.into(), kind);
        endpoint.healthy = true;
        if kind == EndpointKind::Ollama {
            endpoint.models = vec![Model { loaded: true, ..Model::named("m") }];
        }
        hub.report(sidecar, FromSidecar::Models(vec![endpoint]));
    }
    hub
}

fn llm_spec(tier: Tier) -> TaskSpec {
    let mut spec = shell();
    spec.work = Work::Llm(LlmWork::prompt("hi"));
    spec.tier = Some(tier);
    spec
}

#[test]
fn blocked_tasks_wait_aside_and_run_when_an_agent_that_can_serve_them_frees() {
    let mut hub = llm_fleet();
    let first = hub.submit(llm_spec(Tier::Standard));
    let second = hub.submit(llm_spec(Tier::Standard));
    let shell_task = hub.submit(shell());
    assert_eq!(hub.assigned("local"), vec![(first, 1)]);
    assert_eq!(hub.assigned("cloud"), vec![(shell_task, 1)], "the shell task behind the blocked one ran");
    let stats = hub.ask(|reply| Event::Stats { reply });
    assert_eq!((stats.ready, stats.blocked), (1, 1));
    let why = hub.ask(|reply| Event::Why { id: second, reply }).unwrap();
    assert_eq!((why.code.as_str(), why.waiting, why.model.as_deref()), ("all_busy", true, Some("m")));
    // The cloud sidecar frees up: it cannot serve `m`, so the blocked task stays put.
    hub.finish("cloud", shell_task, 1, 0);
    assert_eq!(hub.assigned("cloud").len(), 1);
    // The local agent frees: the blocked task goes there.
    hub.finish("local", first, 1, 0);
    assert_eq!(hub.assigned("local"), vec![(first, 1), (second, 1)]);
    let decisions = hub.ask(|reply| Event::Explain { id: second, reply }).unwrap();
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].kind, RecordedKind::Placed);
    assert!(decisions[0].reason().contains("on local/0 (m warm)"), "{}", decisions[0].reason());
}

#[test]
fn complex_work_falls_back_to_the_standard_tier_when_no_claude_sidecar_is_left() {
    let mut hub = llm_fleet();
    let placed = hub.submit(llm_spec(Tier::Complex));
    assert_eq!(hub.assigned("cloud"), vec![(placed, 1)]);
    hub.finish("cloud", placed, 1, 0);
    hub.leave("cloud");
    let waiting = hub.submit(llm_spec(Tier::Complex));
    let why = hub.ask(|reply| Event::Why { id: waiting, reply }).unwrap();
    assert_eq!((why.code.as_str(), why.fallback_at_unix_ms), ("model_nowhere", Some(hub.now + 1_000)), "{why:?}");
    hub.tick_at(hub.now + 999);
    assert!(hub.assigned("local").is_empty());
    hub.tick_at(hub.now + 1);
    assert_eq!(hub.assigned("local"), vec![(waiting, 1)], "moved to standard, it runs on the local model");
    let decisions = hub.ask(|reply| Event::Explain { id: waiting, reply }).unwrap();
    let kinds: Vec<RecordedKind> = decisions.iter().map(|d| d.kind).collect();
    assert_eq!(kinds, vec![RecordedKind::Fallback, RecordedKind::Placed]);
    assert!(
        decisions[0].reason().starts_with("moved from tier complex to standard after 1.0 s"),
        "{}",
        decisions[0].reason()
    );
    assert_eq!(decisions[1].explanation.tier_source, crate::sched::TierSource::Fallback { from: Tier::Complex });
    assert_eq!(hub.ask(|reply| Event::Stats { reply }).tier_fallbacks, 1);
    // Local-only work never falls back onto the Claude API, and an explicit model never moves.
    let mut private = llm_spec(Tier::Standard);
    private.placement.local_only = true;
    let busy = hub.submit(private);
    let mut named = llm_spec(Tier::Standard);
    if let Work::Llm(llm) = &mut named.work {
        llm.model = "m".into();
    }
    let pinned = hub.submit(named);
    hub.tick_at(hub.now + 5_000);
    for id in [busy, pinned] {
        assert_eq!(hub.task(id).state, TaskState::Queued);
    }
    assert_eq!(hub.ask(|reply| Event::Stats { reply }).tier_fallbacks, 1, "busy is not missing: no fallback");
}

#[test]
fn a_blocked_task_runs_once_a_sidecar_reports_its_model() {
    use crate::fleet::{Endpoint, EndpointKind, Model, Owner};
    let mut hub = llm_fleet();
    let mut spec = llm_spec(Tier::Standard);
    if let Work::Llm(llm) = &mut spec.work {
        llm.model = "new:7b".into();
    }
    let id = hub.submit(spec);
    assert_eq!(hub.ask(|reply| Event::Why { id, reply }).unwrap().code, "model_nowhere");
    assert_eq!(hub.ask(|reply| Event::Stats { reply }).blocked, 1);
    let mut endpoint = Endpoint::new(Owner::Sidecar("local".into()), "http://local:11434".into(), EndpointKind::Ollama);
    endpoint.healthy = true;
    endpoint.models = vec![Model::named("m"), Model::named("new:7b")];
    hub.report("local", FromSidecar::Models(vec![endpoint]));
    assert_eq!(hub.assigned("local"), vec![(id, 1)], "the inventory change unblocked it");
}

/// The sidecar `spare`: shell and LLM work, one slot, `m` (1 GB: half a second to load by
/// default) cold on its Ollama, 8 GB of RAM free and no GPUs.
fn join_spare(hub: &mut Harness, loaded: bool) -> String {
    use crate::fleet::{Endpoint, EndpointKind, Model, Owner, Resources};
    if !hub.sessions.contains_key("spare") {
        hub.join("spare", 1, Vec::new());
        hub.runs_llm("spare");
        let free = Resources { memory_available_bytes: 8_000_000_000, ..Resources::default() };
        hub.report("spare", FromSidecar::Resources(Box::new(free)));
    }
    let mut endpoint = Endpoint::new(Owner::Sidecar("spare".into()), "http://spare:11434".into(), EndpointKind::Ollama);
    endpoint.healthy = true;
    endpoint.models = vec![Model { loaded, size_bytes: 1_000_000_000, ..Model::named("m") }];
    let id = endpoint.id.clone();
    hub.report("spare", FromSidecar::Models(vec![endpoint]));
    id
}

fn preloads(hub: &Harness, sidecar_id: &str) -> Vec<(String, String, Option<String>)> {
    let sent = hub.sent.get(sidecar_id).map(Vec::as_slice).unwrap_or_default();
    sent.iter()
        .filter_map(|m| match m {
            ToSidecar::Preload { endpoint_id, model, keep_alive } => {
                Some((endpoint_id.clone(), model.clone(), keep_alive.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_model_is_prewarmed_on_an_idle_host_once_its_task_waited_longer_than_the_load() {
    let mut hub = llm_fleet();
    let first = hub.submit(llm_spec(Tier::Standard));
    assert_eq!(hub.assigned("local"), vec![(first, 1)]);
    let endpoint = join_spare(&mut hub, false);
    // The spare's only slot runs shell work; its GPU-less host has room for `m`.
    let mut busy = shell();
    busy.placement.host = "spare".into();
    let busy = hub.submit(busy);
    assert_eq!(hub.assigned("spare"), vec![(busy, 1)]);
    let mut waiting = llm_spec(Tier::Standard);
    if let Work::Llm(llm) = &mut waiting.work {
        llm.keep_alive = Some("30m".into());
    }
    let waiting = hub.submit(waiting);
    assert_eq!(hub.ask(|reply| Event::Why { id: waiting, reply }).unwrap().code, "all_busy");
    // 0.4 s waited is less than the 0.5 s load: nothing yet.
    let submitted = hub.now;
    hub.tick_at(submitted + 400);
    assert!(preloads(&hub, "spare").is_empty());
    // 1.5 s is more: the spare is asked to load it, once.
    hub.tick_at(submitted + 1_500);
    assert_eq!(preloads(&hub, "spare"), vec![(endpoint.clone(), "m".to_owned(), Some("30m".to_owned()))]);
    assert!(preloads(&hub, "local").is_empty(), "warm there already");
    hub.tick_at(submitted + 3_000);
    assert_eq!(preloads(&hub, "spare").len(), 1, "one pre-warm under way at a time");
    assert_eq!(hub.ask(|reply| Event::Stats { reply }).prewarms, 1);
    let decisions = hub.ask(|reply| Event::Explain { id: waiting, reply }).unwrap();
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].kind, RecordedKind::Prewarm);
    let reason = decisions[0].reason();
    assert!(reason.starts_with("pre-warm: asked spare to load m on"), "{reason}");
    assert!(reason.contains("waited up to 1.5 s, longer than its load time there (0.5 s)"), "{reason}");
    // The sidecar answers with the load time, learned for later placements, and reports the
    // model warm: when its slot frees, the waiting task runs there warm.
    let preloaded = FromSidecar::Preloaded { endpoint_id: endpoint, model: "m".into(), load_ms: 450, error: None };
    hub.report("spare", preloaded);
    assert_eq!(hub.state.learned.get("spare", "m").load_ms, Some(450.0));
    join_spare(&mut hub, true);
    hub.finish("spare", busy, 1, 0);
    assert_eq!(hub.assigned("spare"), vec![(busy, 1), (waiting, 1)]);
    hub.tick_at(submitted + 10_000);
    assert_eq!(preloads(&hub, "spare").len(), 1);
}

#[test]
fn no_prewarm_on_a_hub_that_turned_it_off() {
    let mut hub = llm_fleet();
    hub.state.config.prewarm = false;
    hub.submit(llm_spec(Tier::Standard));
    join_spare(&mut hub, false);
    let mut busy = shell();
    busy.placement.host = "spare".into();
    hub.submit(busy);
    hub.submit(llm_spec(Tier::Standard));
    let submitted = hub.now;
    hub.tick_at(submitted + 5_000);
    assert!(preloads(&hub, "spare").is_empty());
}

#[test]
fn an_endpoints_parallelism_is_learned_from_requests_placed_beside_others() {
    let mut hub = llm_fleet();
    hub.join("local", 2, Vec::new()); // Two slots now, in front of the same Ollama.
    hub.runs_llm("local");
    let endpoint = hub.state.registry.iter().find(|e| e.kind == crate::fleet::EndpointKind::Ollama).unwrap().id.clone();
    let mut named = llm_spec(Tier::Standard);
    if let Work::Llm(llm) = &mut named.work {
        llm.model = "m".into();
    }
    let (first, second) = (hub.submit(named.clone()), hub.submit(named));
    assert_eq!(hub.assigned("local").len(), 2, "both on the one endpoint");
    assert_eq!(hub.state.in_flight.get(&endpoint), Some(&2));
    let finish = |hub: &mut Harness, id, ttft_ms| {
        let usage = Usage { model: "m".into(), ttft_ms: Some(ttft_ms), ..Usage::default() };
        let outcome = Outcome { exit: Exit::Code(0), usage: Some(usage), ..Outcome::empty() };
        hub.report("local", FromSidecar::Finished { task_id: id, lease_generation: 1, outcome: Box::new(outcome) });
    };
    // The first ran alone (its usual first token: 40 ms); the second, placed beside it, got its
    // first token on time: the endpoint runs two at once.
    finish(&mut hub, first, 40);
    finish(&mut hub, second, 55);
    assert_eq!(hub.state.learned.parallel(&endpoint), Some(2));
    let listed = hub.ask(|reply| Event::Endpoints { reply });
    let learned: Vec<Option<u32>> = listed.iter().filter(|(e, _)| e.id == endpoint).map(|(_, l)| *l).collect();
    assert_eq!(learned, vec![Some(2)]);
}

#[test]
fn a_failed_prewarm_is_not_retried_at_once_and_unasked_answers_teach_nothing() {
    let mut hub = llm_fleet();
    // Minutes pass without heartbeats in this test: nothing lapses meanwhile.
    hub.state.config.heartbeat_ttl = std::time::Duration::from_secs(3_600);
    hub.state.config.lease_ttl = std::time::Duration::from_secs(3_600);
    hub.submit(llm_spec(Tier::Standard));
    let endpoint = join_spare(&mut hub, false);
    let mut busy = shell();
    busy.placement.host = "spare".into();
    hub.submit(busy);
    hub.submit(llm_spec(Tier::Standard));
    let submitted = hub.now;
    // An answer to nothing asked changes nothing.
    let unasked = FromSidecar::Preloaded { endpoint_id: endpoint.clone(), model: "m".into(), load_ms: 9, error: None };
    hub.report("spare", unasked);
    assert_eq!(hub.state.learned.get("spare", "m").load_ms, None);
    hub.tick_at(submitted + 1_500);
    assert_eq!(preloads(&hub, "spare").len(), 1);
    let failed = FromSidecar::Preloaded {
        endpoint_id: endpoint,
        model: "m".into(),
        load_ms: 0,
        error: Some("model requires more system memory".into()),
    };
    hub.report("spare", failed);
    hub.tick_at(submitted + 3_000);
    hub.tick_at(submitted + 60_000);
    assert_eq!(preloads(&hub, "spare").len(), 1, "not again within the timeout");
    hub.tick_at(submitted + 1_500 + 6 * 60_000 + 1_000);
    assert_eq!(preloads(&hub, "spare").len(), 2, "tried again after it");
}

#[test]
fn verification_moves_a_task_to_verifying_and_its_verdict_decides_the_end() {
    use crate::domain::{StepReport, Verdict, Verification, VerificationReport};
    let mut hub = Harness::new();
    hub.join("s1", 1, Vec::new());
    let mut spec = shell();
    spec.verification = vec![Verification::FileExists("out.txt".into())];
    let report = |passed: bool| VerificationReport {
        verdict: if passed { Verdict::Passed } else { Verdict::Failed },
        steps: vec![StepReport {
            kind: "file_exists".into(),
            target: "out.txt".into(),
            passed,
            duration_ms: 0,
            evidence: if passed { "out.txt exists (a file)".into() } else { "out.txt does not exist\nmore".into() },
            summary: None,
        }],
    };
    let end = |hub: &mut Harness, report: Option<VerificationReport>| {
        let id = hub.submit(spec.clone());
        let generation = hub.task(id).lease_generation;
        hub.report("s1", FromSidecar::Started { task_id: id, lease_generation: generation, pid: 0 });
        let verifying = FromSidecar::Progress {
            task_id: id,
            lease_generation: generation,
            blocked: false,
            verifying: true,
            message: "verifying".into(),
            step: None,
            service: None,
        };
        hub.report("s1", verifying);
        assert_eq!(hub.task(id).state, TaskState::Verifying);
        let outcome = Outcome { exit: Exit::Code(0), verification: report, ..Outcome::empty() };
        hub.report(
            "s1",
            FromSidecar::Finished { task_id: id, lease_generation: generation, outcome: Box::new(outcome) },
        );
        hub.task(id)
    };
    let passed = end(&mut hub, Some(report(true)));
    assert_eq!(passed.state, TaskState::Succeeded);
    let failed = end(&mut hub, Some(report(false)));
    assert_eq!((failed.state, failed.attempt), (TaskState::Failed, 1), "final, not retried");
    assert_eq!(failed.state_reason, "verification_failed: file_exists out.txt: out.txt does not exist");
    let unreported = end(&mut hub, None);
    assert_eq!(unreported.state, TaskState::Failed);
    assert!(unreported.state_reason.starts_with("verification_failed: the sidecar sent no verification report"));
}

#[test]
fn a_failed_verification_escalates_a_tier_and_the_verdicts_are_counted_by_model() {
    use crate::domain::{StepReport, Usage, Verdict, Verification, VerificationReport};
    let mut hub = llm_fleet();
    hub.state.config.escalate = true;
    let mut spec = llm_spec(Tier::Standard);
    spec.verification = vec![Verification::OutputContains(crate::domain::Pattern::Text("42".into()))];
    let id = hub.submit(spec);
    assert_eq!(hub.assigned("local"), vec![(id, 1)]);
    let finish = |hub: &mut Harness, sidecar: &str, generation: u64, model: &str, passed: bool| {
        let report = VerificationReport {
            verdict: if passed { Verdict::Passed } else { Verdict::Failed },
            steps: vec![StepReport {
                kind: "output_contains".into(),
                target: "text \"42\"".into(),
                passed,
                duration_ms: 0,
                evidence: if passed { "found \"42\"".into() } else { "\"42\" is not in the 2 bytes of output".into() },
                summary: None,
            }],
        };
        let usage = Usage { model: model.into(), provider: "ollama".into(), ..Usage::default() };
        let outcome =
            Outcome { exit: Exit::Code(0), usage: Some(usage), verification: Some(report), ..Outcome::empty() };
        hub.report(
            sidecar,
            FromSidecar::Finished { task_id: id, lease_generation: generation, outcome: Box::new(outcome) },
        );
    };
    // The local model's answer fails its check: the task goes again, one tier up, on Claude.
    finish(&mut hub, "local", 1, "m", false);
    assert_eq!(hub.assigned("cloud"), vec![(id, 2)], "escalated to the complex tier's model");
    let task = hub.task(id);
    assert_eq!((task.state, task.attempt), (TaskState::Dispatched, 2));
    let decisions = hub.ask(|reply| Event::Explain { id, reply }).unwrap();
    let kinds: Vec<RecordedKind> = decisions.iter().map(|d| d.kind).collect();
    assert_eq!(kinds, vec![RecordedKind::Placed, RecordedKind::Escalate, RecordedKind::Placed]);
    assert!(
        decisions[1].reason().starts_with(
            "escalated from tier standard (m) to complex (claude-sonnet-4-5) for attempt 2: verification_failed"
        ),
        "{}",
        decisions[1].reason()
    );
    assert_eq!(decisions[2].explanation.tier_source, crate::sched::TierSource::Fallback { from: Tier::Standard });
    finish(&mut hub, "cloud", 2, "claude-sonnet-4-5", true);
    assert_eq!(hub.task(id).state, TaskState::Succeeded);
    let stats = hub.ask(|reply| Event::ModelStats { reply });
    let rows: Vec<(&str, &str, &str, u64, u64)> =
        stats.iter().map(|s| (s.model.as_str(), s.kind, s.tier, s.passed, s.failed)).collect();
    assert_eq!(rows, vec![("claude-sonnet-4-5", "llm", "complex", 1, 0), ("m", "llm", "standard", 0, 1)]);
    assert_eq!(stats[1].pass_rate, 0.6, "3 prior passes of 5");
    assert_eq!(hub.ask(|reply| Event::Stats { reply }).escalations, 1);
    // Each count is stored as it changes, the escalated attempt's included, so a restart
    // (which has only the task's last outcome) keeps both.
    assert_eq!(
        hub.verdicts_written,
        vec![
            ("m".to_owned(), "llm", Tier::Standard, 0, 1),
            ("claude-sonnet-4-5".to_owned(), "llm", Tier::Complex, 1, 0)
        ]
    );
    let stored = hub
        .verdicts_written
        .iter()
        .map(|(m, k, t, p, f)| (m.clone(), *k, *t, crate::sched::Tally { passed: *p, failed: *f }));
    let mut restarted = Harness::new();
    restarted.state.learned.seed_verdicts(stored.collect());
    restarted.state.restore(vec![store::Loaded::from_task(hub.task(id))], T0);
    let stats = restarted.ask(|reply| Event::ModelStats { reply });
    let rows: Vec<(&str, u64, u64)> = stats.iter().map(|s| (s.model.as_str(), s.passed, s.failed)).collect();
    assert_eq!(rows, vec![("claude-sonnet-4-5", 1, 0), ("m", 0, 1)], "stored counts, not recounted");
    // A store from before verdicts were stored counts them from its tasks once (each task's
    // last outcome, at the task's own tier: where an escalation took it is not stored), and
    // stores them.
    let mut upgraded = Harness::new();
    upgraded.state.restore(vec![store::Loaded::from_task(hub.task(id))], T0);
    upgraded.event(Event::Tick);
    assert_eq!(upgraded.verdicts_written, vec![("claude-sonnet-4-5".to_owned(), "llm", Tier::Standard, 1, 0)]);

    // Without --escalate, the failure is final.
    hub.state.config.escalate = false;
    let mut spec = llm_spec(Tier::Standard);
    spec.verification = vec![Verification::OutputContains(crate::domain::Pattern::Text("42".into()))];
    let again = hub.submit(spec);
    let generation = hub.task(again).lease_generation;
    let report = VerificationReport { verdict: Verdict::Failed, steps: Vec::new() };
    let outcome = Outcome { exit: Exit::Code(0), verification: Some(report), ..Outcome::empty() };
    hub.report(
        "local",
        FromSidecar::Finished { task_id: again, lease_generation: generation, outcome: Box::new(outcome) },
    );
    assert_eq!(hub.task(again).state, TaskState::Failed);
}

#[test]
fn failed_verdicts_of_a_tier_model_move_later_verified_work_up_a_tier() {
    use crate::domain::{Verdict, Verification, VerificationReport};
    let mut hub = llm_fleet();
    // Inferred standard: a file to look at, and three checks.
    let mut spec = llm_spec(Tier::Standard);
    spec.tier = None;
    spec.context.files = vec!["src/lib.rs".into()];
    spec.verification = vec![Verification::FileExists("a".into()); 3];
    for n in 1..=5 {
        let id = hub.submit(spec.clone());
        assert_eq!(hub.assigned("local").last(), Some(&(id, 1)), "round {n} on the tier's model");
        let usage = Usage { model: "m".into(), provider: "ollama".into(), ..Usage::default() };
        let report = VerificationReport { verdict: Verdict::Failed, steps: Vec::new() };
        let outcome =
            Outcome { exit: Exit::Code(0), usage: Some(usage), verification: Some(report), ..Outcome::empty() };
        hub.report("local", FromSidecar::Finished { task_id: id, lease_generation: 1, outcome: Box::new(outcome) });
        assert_eq!(hub.task(id).state, TaskState::Failed);
    }
    // m has failed five times in five: the next one goes to the complex tier's Claude.
    let id = hub.submit(spec);
    assert_eq!(hub.assigned("cloud"), vec![(id, 1)]);
    let decisions = hub.ask(|reply| Event::Explain { id, reply }).unwrap();
    assert_eq!(decisions[0].explanation.tier_source, crate::sched::TierSource::PassRate { from: Tier::Standard });
    assert_eq!(decisions[0].explanation.model.as_deref(), Some("claude-sonnet-4-5"));
}

mod durable;
mod model;
mod packing;
mod workflows;

/// The state draws its randomness from the seed it was given: the same seed and events make
/// the same task ids.
#[test]
fn the_same_seed_and_events_make_the_same_decisions() {
    let ids = || {
        let mut hub = Harness::new();
        hub.join("s1", 1, vec![]);
        (0..5).map(|_| hub.submit(shell())).collect::<Vec<_>>()
    };
    let first = ids();
    assert_eq!(first, ids());
    assert_eq!(first.iter().collect::<std::collections::HashSet<_>>().len(), 5, "distinct ids");
}

#[test]
fn a_gateway_request_keeps_no_text_counts_its_key_spend_and_fails_at_a_restart() {
    let mut hub = llm_fleet();
    let gateway = |prompt: &str| {
        let mut spec = llm_spec(Tier::Standard);
        spec.priority = Lane::Interactive;
        spec.work = Work::Llm(LlmWork { redact: true, model: "m".into(), ..LlmWork::prompt(prompt) });
        spec.labels.insert(crate::core::GATEWAY_KEY.into(), "tok-a".into());
        spec
    };
    let id = hub.submit(gateway("secret question"));
    let generation = hub.task(id).lease_generation;
    assert_eq!(hub.assigned("local"), vec![(id, generation)]);
    let usage = crate::domain::Usage {
        provider: "ollama".into(),
        model: "m".into(),
        input_tokens: 10,
        cached_input_tokens: 2,
        output_tokens: 5,
        ..crate::domain::Usage::default()
    };
    let outcome =
        Outcome { exit: Exit::Code(0), stdout: b"secret answer".to_vec(), usage: Some(usage), ..Outcome::empty() };
    hub.report(
        "local",
        FromSidecar::Finished { task_id: id, lease_generation: generation, outcome: Box::new(outcome) },
    );
    assert_eq!(hub.task(id).state, TaskState::Succeeded);
    assert_eq!(hub.stored.outputs[&id], b"", "the reply is not stored");
    let (row, spend) = hub.stored.usage.last().cloned().expect("the key's spend is stored");
    assert_eq!((row.key.as_str(), row.model.as_str()), ("tok-a", "m"));
    assert_eq!((spend.requests, spend.input_tokens, spend.output_tokens), (1, 12, 5));
    let rows = hub.ask(|reply| Event::Usage { reply });
    assert_eq!(rows, vec![(row.clone(), spend)]);
    let spent = hub.ask(|reply| Event::Spent { key: "tok-a".into(), day: row.day.clone(), reply });
    assert_eq!(spent, (spend, spend), "what a budget is checked against: the day's and the month's");

    // A request the hub held when it stopped cannot run again: its prompt was never stored.
    let waiting = hub.submit(gateway("another"));
    let restarted = hub.restart(|_| Vec::new());
    let mut restarted = restarted;
    let task = restarted.task(waiting);
    assert_eq!(task.state, TaskState::Failed);
    assert!(task.state_reason.contains("prompt was not stored"), "{}", task.state_reason);
    assert!(restarted.assigned("local").is_empty(), "nothing ran again");
}
