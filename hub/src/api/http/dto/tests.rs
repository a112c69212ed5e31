//! Each shape, filled in completely (every optional field present, every list with an
//! item), against the example under its heading in `docs/api.md` "JSON shapes": the same
//! set of field paths, or the test names what differs.

use std::collections::BTreeSet;

use serde_json::Value;

use super::*;
use crate::agent::AgentState;
use crate::domain::{Lane, SpecDefaults, TaskId, TaskState, Tier};
use crate::fleet::{Disk, EndpointKind, Gpu, GpuProcess};

fn paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                out.insert(path.clone());
                paths(value, &path, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| paths(item, &format!("{prefix}[]"), out)),
        _ => {}
    }
}

/// The example JSON under `#### \`name\`` in the "JSON shapes" section of docs/api.md.
fn documented(name: &str) -> Value {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md")).unwrap();
    let section = doc.split("\n## JSON shapes").nth(1).expect("docs/api.md has a JSON shapes section");
    let heading = format!("\n#### `{name}`");
    let after = section.split(&heading).nth(1).unwrap_or_else(|| panic!("docs/api.md documents no `{name}` shape"));
    let block = after.split("```json\n").nth(1).and_then(|b| b.split("\n```").next()).expect("a json block");
    serde_json::from_str(block).unwrap_or_else(|err| panic!("the `{name}` example is not JSON: {err}"))
}

fn check(name: &str, shape: impl Serialize) {
    let (mut actual, mut expected) = (BTreeSet::new(), BTreeSet::new());
    paths(&serde_json::to_value(shape).unwrap(), "", &mut actual);
    paths(&documented(name), "", &mut expected);
    let missing: Vec<_> = actual.difference(&expected).collect();
    let stale: Vec<_> = expected.difference(&actual).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/api.md `{name}` is out of date: not documented {missing:?}; documented but not sent {stale:?}"
    );
}

fn full_task() -> Task {
    let mut spec = TaskSpec::shell(vec!["make".into(), "test".into()], &SpecDefaults::default());
    spec.name = "unit tests".into();
    spec.idempotency_key = Some("build-1234".into());
    spec.priority = Lane::High;
    spec.tier = Some(Tier::Trivial);
    if let Work::Shell(shell) = &mut spec.work {
        shell.cwd = Some("repo".into());
        shell.env.insert("CI".into(), "1".into());
        shell.secret_env.push("API_TOKEN".into());
    }
    spec.context.env.insert("A".into(), "1".into());
    spec.context.files.push("src/lib.rs".into());
    spec.success_criteria.push("tests pass".into());
    spec.verification.push(Verification::FileExists("out.txt".into()));
    spec.limits.timeout_ms = Some(600_000);
    spec.limits.deadline_unix_ms = Some(1);
    spec.limits.max_tokens = Some(1);
    spec.limits.max_cost_micros = Some(1);
    spec.limits.max_memory_bytes = Some(1 << 30);
    spec.limits.max_pids = Some(64);
    spec.placement.tags.push("gpu".into());
    spec.depends_on.push(TaskId::new(1));
    spec.labels.insert("team".into(), "infra".into());
    spec.retry.retry_on_exit_codes.push(75);
    let mut task = Task::new(TaskId::new(2), spec, 2);
    task.set_state(TaskState::Succeeded, "", 3);
    task.agent_id = Some("host/0".into());
    task.sidecar_id = Some("host".into());
    task.started_unix_ms = Some(2);
    task.outcome = Some(Outcome {
        exit: Exit::Code(0),
        duration_ms: 3,
        stdout: b"hello\n".to_vec(),
        stderr: Vec::new(),
        stdout_total_bytes: 6,
        stderr_total_bytes: 0,
        timed_out: false,
        error: Some("only when the work could not run".into()),
        usage: Some(Usage {
            provider: "ollama".into(),
            endpoint_id: "ep-7b3b6fba1efa".into(),
            model: "llama3.2:3b".into(),
            input_tokens: 26,
            output_tokens: 2,
            cached_input_tokens: 0,
            cache_write_tokens: 0,
            ttft_ms: Some(41),
            output_tokens_per_s: Some(20.0),
            load_ms: Some(900),
            cost_micros: Some(0),
            estimated: false,
            stop_reason: "stop".into(),
        }),
        budget_exceeded: false,
        verification: Some(crate::domain::VerificationReport {
            verdict: crate::domain::Verdict::Passed,
            steps: vec![crate::domain::StepReport {
                kind: "test_passes".into(),
                target: "make test".into(),
                passed: true,
                duration_ms: 812,
                evidence: "exit code 0".into(),
                summary: Some("test result: ok. 3 passed; 0 failed".into()),
            }],
        }),
        workspace: Some(crate::domain::WorkspaceReport {
            repository: "/srv/repos/app".into(),
            base: "3f2a9c".into(),
            branch: Some("agentcom/01M7".into()),
            commit: Some("9c1d07".into()),
            diff_stat: " out.txt | 1 +".into(),
            diff: "+hello".into(),
            diff_total_bytes: 6,
            kept_at: None,
            pushed_to: None,
            push_error: None,
        }),
        rounds: vec![crate::domain::Round {
            number: 1,
            verdict: "passed".into(),
            failed: Vec::new(),
            diff_stat: " out.txt | 1 +".into(),
            input_tokens: 1200,
            output_tokens: 300,
            cost_micros: Some(8100),
        }],
        steps: vec![step()],
        output_dropped_unix_ms: Some(1795000600000),
        tool_calls: Vec::new(),
    });
    task
}

fn step() -> crate::domain::AgentStep {
    crate::domain::AgentStep {
        round: 1,
        tool: "write_file".into(),
        summary: "out.txt".into(),
        result_bytes: 14,
        ok: true,
        input_tokens: 1200,
        output_tokens: 40,
    }
}

#[test]
fn the_llm_work_shape_is_documented() {
    use crate::domain::{ChatMessage, ChatRole, LlmWork};
    let work = Work::Llm(LlmWork {
        system: "be brief".into(),
        messages: vec![ChatMessage::new(ChatRole::User, "hi")],
        model: "llama3.2:3b".into(),
        max_tokens: 256,
        temperature: Some(0.2),
        stop: vec!["\n\n".into()],
        json: true,
        keep_alive: Some("10m".into()),
        ..LlmWork::prompt("Summarize the log")
    });
    check("llm", WorkDto::from(&work));
}

#[test]
fn the_service_shapes_are_documented() {
    use crate::domain::{ServiceState, ServiceStatus, ServiceWork};
    check("service_work", WorkDto::from(&Work::Service(Box::new(ServiceWork::example()))));
    let mut task = full_task();
    task.spec.work = Work::Service(Box::new(ServiceWork::example()));
    task.spec.labels.insert("workflow_run".into(), "01M7Y9W2A3H1S5QJ8R0C4V6XKE".into());
    task.service = Some(Box::new(ServiceStatus {
        state: ServiceState::Ready,
        ports: [("web".to_owned(), 41234), ("admin".to_owned(), 41235)].into(),
        restarts: 0,
        evidence: String::new(),
        started_unix_ms: 1,
        ready_unix_ms: Some(2),
    }));
    task.state = TaskState::Running;
    check("service", ServiceDto::of(&task, Some("build-1".into())));
    let shown = serde_json::to_value(TaskDto::from(&task)).unwrap();
    assert_eq!(shown["service"]["state"], "ready");
    assert_eq!(shown["service"]["ports"]["web"], 41234);
}

#[test]
fn the_task_shape_is_documented() {
    check("task", TaskDto::from(&full_task()));
}

#[test]
fn the_agent_shape_is_documented() {
    let agent = AgentView {
        id: "host/0".into(),
        sidecar_id: "host".into(),
        hostname: "host".into(),
        state: AgentState::Working,
        task_id: Some(TaskId::new(1)),
        state_since_unix_ms: 1,
        last_seen_unix_ms: 1,
        capabilities: vec!["shell".into()],
        tags: vec!["dev".into()],
        version: "0.1.0".into(),
        stalled: false,
        last_activity_unix_ms: 1,
        cordoned: false,
    };
    let transition = Transition { at_unix_ms: 1, from: AgentState::Idle, to: AgentState::Assigned, cause: "x".into() };
    check("agent", AgentDto::from(&AgentDetail { agent, history: vec![transition] }));
}

#[test]
fn the_host_shape_is_documented() {
    let gpu = Gpu {
        index: 0,
        name: "NVIDIA H200".into(),
        uuid: "GPU-1".into(),
        utilization_percent: Some(1),
        memory_utilization_percent: Some(1),
        memory_used_bytes: Some(1),
        memory_total_bytes: Some(1),
        temperature_celsius: Some(1),
        power_milliwatts: Some(1),
        processes: vec![GpuProcess { pid: 1, used_memory_bytes: Some(1) }],
    };
    let resources = Resources {
        cpu_per_core_percent: vec![1.0],
        disks: vec![Disk { mount: "/".into(), total_bytes: 1, available_bytes: 1 }],
        gpus: vec![gpu],
        ..Resources::default()
    };
    let host = HostView {
        id: "host".into(),
        hostname: "host".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        version: "0.1.0".into(),
        online: true,
        last_seen_unix_ms: 1,
        cordon: Some(Cordon { since_unix_ms: 1, deadline_unix_ms: Some(2) }),
        agents: 4,
        containment: "cgroup-v2".into(),
        history: Some(vec![Sample::of(&resources)]),
        resources: Some(resources),
    };
    check("host", HostDto::from(&host));
}

#[test]
fn the_endpoint_shape_is_documented() {
    let mut endpoint =
        Endpoint::new(Owner::Sidecar("host".into()), "http://127.0.0.1:11434".into(), EndpointKind::Ollama);
    endpoint.error = Some("connection refused".into());
    endpoint.models = vec![Model { expires_unix_ms: Some(1), ..Model::named("llama3.2:3b") }];
    check("endpoint", EndpointDto::from(&endpoint));
}

#[test]
fn the_queue_and_backup_shapes_are_documented() {
    let queue = QueueStats {
        tasks: 1,
        ready: 1,
        delayed: 0,
        waiting_on_dependencies: 0,
        leased: 0,
        dead_lettered: 0,
        stale_messages_refused: 0,
        blocked: 0,
        tier_fallbacks: 0,
        prewarms: 0,
        escalations: 0,
        ready_by_lane: [0, 0, 0, 1, 0],
        oldest_ready_unix_ms: Some(1),
    };
    check("queue", QueueDto::from(&queue));
    check("backup", BackupDto { path: "/var/lib/agentcom/backups/hub-1.redb".into(), tasks: 1, bytes: 1 });
    let token = crate::auth::TokenInfo {
        id: "tok-1a2b3c4d5e6f".into(),
        role: crate::auth::Role::Inference,
        name: "open-webui".into(),
        created_unix_ms: 1,
        limits: crate::auth::KeyLimits {
            rpm: Some(60),
            tpm: Some(100_000),
            daily_budget_usd: Some(5.0),
            monthly_budget_usd: Some(50.0),
            models: vec!["llama3.2:3b".into()],
            local_only: true,
            store: false,
        },
    };
    check("token", TokenDto::from(&token));
    let spend = crate::usage::Spend { requests: 12, input_tokens: 3400, output_tokens: 900, cost_micros: 4_200 };
    let usage = UsageDto::of(
        Some("2026-12-08".into()),
        Some((Some("open-webui".into()), "tok-1a2b3c4d5e6f".into())),
        Some("llama3.2:3b".into()),
        spend,
    );
    check("usage", usage);
    let entry = crate::store::AuditEntry {
        id: ulid::Ulid::nil(),
        at_unix_ms: 1,
        actor: "tok-1a2b3c4d5e6f".into(),
        role: "operator".into(),
        action: "drain".into(),
        target: "host-3fa2c1".into(),
        detail: String::new(),
    };
    check("audit", AuditDto::from(&entry));
    let grant = crate::store::JoinGrant {
        id: "3fa2c1d4e5f6".into(),
        secret_sha256: "x".into(),
        uses: 1,
        used: 0,
        expires_unix_ms: 1_795_003_600_000,
        tags: vec!["gpu".into()],
        created_unix_ms: 1,
        created_by: "tok-1a2b3c4d5e6f".into(),
    };
    check("join_token", JoinTokenDto::new(&grant, 0));
    let identity = crate::store::SidecarIdentity {
        sidecar_id: "gpu-1-9c0d1e2f".into(),
        cert_sha256: "5d41".into(),
        hostname: "gpu-1".into(),
        tags: vec!["gpu".into()],
        join_token_id: "3fa2c1d4e5f6".into(),
        enrolled_unix_ms: 1,
        revoked_unix_ms: 0,
    };
    check("sidecar", SidecarIdentityDto::new(&identity, true));
    check("output", OutputEventDto { attempt: 1, stream: "stdout", offset: 0, data_base64: "aGk=".into() });
    check("step", StepEventDto { attempt: 1, number: 0, step: (&step()).into() });
}

#[test]
fn enumerations_serialize_as_documented() {
    let json = |value: serde_json::Result<String>| value.unwrap();
    assert_eq!(json(serde_json::to_string(&ExitDto::Signal(9))), r#"{"signal":9}"#);
    assert_eq!(json(serde_json::to_string(&ExitDto::Unknown)), r#""unknown""#);
    assert_eq!(json(serde_json::to_string(&VerificationDto::GitClean)), r#""git_clean""#);
    assert_eq!(json(serde_json::to_string(&CommandDto::Script("make".into()))), r#"{"script":"make"}"#);
    assert_eq!(json(serde_json::to_string(&OwnerDto::Hub)), r#"{"by":"hub"}"#);
}

#[test]
fn the_decision_and_why_shapes_are_documented() {
    use crate::core::{Recorded, RecordedKind, WhyAnswer};
    use crate::sched::{Candidate, Decision, Estimate, Explanation, TierSource, Verdict, Wait};
    let estimate = Estimate { wait_ms: 0.0, load_ms: 0.0, generate_ms: 2133.3, fit_ms: 0.0 };
    let candidate = Candidate {
        sidecar_id: "warm-host".into(),
        agent_id: Some("warm-host/0".into()),
        endpoint_id: Some("ep-7b3b6fba1efa".into()),
        estimate: Some(estimate),
        warm: true,
        in_flight: 0,
        idle_agents: 0,
        verdict: Verdict::Chosen,
    };
    let placed = Explanation {
        decision: Decision::Place {
            sidecar_id: "warm-host".into(),
            agent_id: "warm-host/0".into(),
            endpoint_id: Some("ep-7b3b6fba1efa".into()),
            model: Some("llama3.2:3b".into()),
            estimate: Some(estimate),
        },
        tier: Tier::Standard,
        tier_source: TierSource::Inferred,
        model: Some("llama3.2:3b".into()),
        candidates: vec![candidate.clone()],
        more_candidates: 0,
        judge: Some(crate::sched::judge::Judge {
            model: "qwen2.5:7b".into(),
            endpoint_id: "ep-7b3b6fba1efa".into(),
            estimate: Estimate { wait_ms: 0.0, load_ms: 0.0, generate_ms: 533.3, fit_ms: 0.0 },
        }),
    };
    let recorded = Recorded { at: 1, attempt: 1, kind: RecordedKind::Placed, note: None, explanation: placed };
    let dto = DecisionDto::from(&recorded);
    assert_eq!((dto.kind, dto.tier_source.as_str(), dto.wait), (Some("placed"), "inferred", None));
    check("decision", dto);
    let waiting = Explanation {
        decision: Decision::Wait(Wait::AllBusy),
        candidates: vec![Candidate { agent_id: None, verdict: Verdict::Busy, ..candidate }],
        judge: None,
        ..recorded.explanation.clone()
    };
    let why = WhyAnswer {
        task_id: TaskId::new(7),
        state: TaskState::Queued,
        waiting: true,
        code: "all_busy".into(),
        message: format!("{}; 3 ahead of it in the queue", Wait::AllBusy.describe()),
        since_unix_ms: 1,
        tier: Tier::Standard,
        tier_source: TierSource::Inferred,
        model: Some("llama3.2:3b".into()),
        fallback_at_unix_ms: None,
        explanation: Some(waiting),
        stuck: false,
    };
    let dto = WhyDto::from(&why);
    assert_eq!(dto.placement_now.as_ref().unwrap().wait, Some("all_busy"));
    check("why", dto);
}

#[test]
fn the_run_shape_is_documented() {
    use crate::core::workflows::{RunView, StepView};
    let step = StepView {
        id: "per-file".into(),
        state: "succeeded",
        step_state: "succeeded",
        round: 1,
        item: Some(2),
        item_value: Some(serde_json::json!("c.rs")),
        task_id: Some(TaskId(ulid::Ulid(7))),
        reason: Some("r".into()),
        started_unix_ms: Some(1),
        finished_unix_ms: Some(2),
        exit_code: Some(0),
        outputs: serde_json::json!({"label": "bug"}).as_object().unwrap().clone(),
        verdict: Some("passed".into()),
        model: Some("m".into()),
        input_tokens: 1,
        output_tokens: 1,
        cost_micros: Some(1),
    };
    let run = RunView {
        id: ulid::Ulid(1),
        name: "w".into(),
        state: "succeeded",
        trigger: "hook:push".into(),
        delivery: Some("d".into()),
        slot_unix_ms: Some(1),
        created_unix_ms: 1,
        ended_unix_ms: Some(2),
        inputs: serde_json::json!({"kind": "bug"}),
        retries: 0,
        counts: [("succeeded", 1)].into_iter().collect(),
        totals: crate::core::workflows::Totals { input_tokens: 1, output_tokens: 1, cost_micros: 1 },
        steps: vec![step],
        graph: vec![crate::core::workflows::GraphStep {
            id: "per-file".into(),
            needs: vec!["classify".into()],
            kind: "prompt",
            conditional: false,
            fan_out: true,
            loop_max: None,
            loop_from: None,
        }],
        existing: false,
    };
    check("run", RunDto::of(&run, 3));
}
