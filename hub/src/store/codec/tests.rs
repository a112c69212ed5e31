//! The stored format's round trips, its refusals of malformed records, and the migration from
//! format 1.

use super::*;

fn full_task() -> Task {
    let mut spec = TaskSpec::shell(vec!["echo".into(), "hi".into()], &SpecDefaults::default());
    spec.name = "everything".into();
    spec.priority = Lane::High;
    spec.tier = Some(Tier::Complex);
    spec.idempotency_key = Some("k1".into());
    spec.labels.insert("team".into(), "infra".into());
    spec.context.env.insert("A".into(), "1".into());
    spec.context.files = vec!["src/lib.rs".into()];
    spec.verification = vec![
        Verification::FileExists("out.txt".into()),
        Verification::CommandSucceeds { argv: vec!["true".into()], timeout_ms: 5 },
        Verification::TestPasses { argv: vec!["make".into(), "test".into()], timeout_ms: 0 },
        Verification::GitClean,
    ];
    spec.limits.timeout_ms = Some(5_000);
    spec.limits.deadline_unix_ms = Some(99);
    spec.limits.max_memory_bytes = Some(1 << 30);
    spec.retry.retry_on_exit_codes = vec![75];
    spec.depends_on = vec![TaskId::new(7), TaskId::new(8)];
    spec.placement.tags = vec!["gpu".into()];
    let mut task = Task::new(TaskId::new(42), spec, 42);
    task.set_state(TaskState::Failed, "exit code 3", 50);
    task.attempt = 2;
    task.lease_generation = 3;
    task.agent_id = Some("s/0".into());
    task.started_unix_ms = Some(45);
    task.outcome = Some(Outcome {
        exit: Exit::Signal(9),
        duration_ms: 8,
        stdout: b"out".to_vec(),
        stderr: vec![0xff, 0x00],
        stdout_total_bytes: 3,
        stderr_total_bytes: 2,
        timed_out: true,
        error: Some("boom".into()),
        usage: None,
        budget_exceeded: true,
        verification: None,
        workspace: None,
        rounds: Vec::new(),
        steps: vec![AgentStep { round: 2, tool: "run_command".into(), ok: true, ..AgentStep::default() }],
        output_dropped_unix_ms: Some(1_800_000_000_123),
        tool_calls: Vec::new(),
    });
    task
}

/// The storage format's enums number their values as `Numbered` does.
#[test]
fn stored_enum_values_are_the_stable_numbers() {
    check_numbering(|n| pb::Lane::try_from(n).ok().map(|e| e.as_str_name()), Lane::as_str).unwrap();
    check_numbering(|n| pb::Tier::try_from(n).ok().map(|e| e.as_str_name()), Tier::as_str).unwrap();
    check_numbering(|n| pb::State::try_from(n).ok().map(|e| e.as_str_name()), TaskState::as_str).unwrap();
}

#[test]
fn every_field_of_a_task_survives_storage() {
    let task = full_task();
    assert_eq!(decode_task(&encode_task(task.clone())), Ok(task));
    let mut llm = full_task();
    llm.spec.work = Work::Llm(LlmWork {
        system: "s".into(),
        messages: vec![ChatMessage::new(ChatRole::User, "hi"), ChatMessage::new(ChatRole::Assistant, "hello")],
        model: "m".into(),
        max_tokens: 9,
        temperature: Some(0.25),
        stop: vec!["END".into()],
        json: true,
        keep_alive: Some("10m".into()),
        ..LlmWork::prompt("p")
    });
    if let Some(outcome) = &mut llm.outcome {
        outcome.usage = Some(Usage {
            provider: "ollama".into(),
            endpoint_id: "ep-1".into(),
            model: "m".into(),
            input_tokens: 26,
            output_tokens: 9,
            cached_input_tokens: 1,
            cache_write_tokens: 2,
            ttft_ms: Some(40),
            output_tokens_per_s: Some(88.5),
            load_ms: Some(900),
            cost_micros: Some(0),
            estimated: true,
            stop_reason: "length".into(),
        });
    }
    llm.spec.idempotency_key = None;
    assert_eq!(decode_task(&encode_task(llm.clone())), Ok(llm));
    let mut service = full_task();
    service.spec.work = Work::Service(Box::new(ServiceWork::example()));
    assert_eq!(decode_task(&encode_task(service.clone())), Ok(service.clone()));
    if let Work::Service(work) = &mut service.spec.work {
        work.readiness =
            Some(Probe { check: ProbeCheck::Command("curl -f localhost".into()), ..work.liveness.clone().unwrap() });
        work.liveness = None;
        work.restart = ServiceRestart { never: true, ..ServiceRestart::default() };
    }
    assert_eq!(decode_task(&encode_task(service.clone())), Ok(service));
}

#[test]
fn a_v1_task_reads_as_the_same_task() {
    let task = full_task();
    let v1 = agentcom_types::wire::task_to_pb(&task).encode_to_vec();
    assert_eq!(decode_task(&task_from_v1(&v1).unwrap()), Ok(task));
}

#[test]
fn v1_fleet_settings_read_as_the_same_settings() {
    let cordon = br#"{"since_unix_ms":5,"deadline_unix_ms":null}"#;
    let migrated = fleet_from_v1("cordon/s1", cordon).unwrap();
    assert_eq!(decode_cordon(&migrated), Ok(Cordon { since_unix_ms: 5, deadline_unix_ms: None }));
    let endpoint = br#"{"id":"ep-1","url":"http://x:1","kind":"ollama","owner":{"by":"sidecar","sidecar_id":"s1"},"healthy":true,"version":"0.12","error":null,"models":[{"name":"m","size_bytes":1,"family":"f","parameter_size":"3B","quantization":"Q4","loaded":true,"size_vram_bytes":2,"expires_unix_ms":3}],"checked_unix_ms":4}"#;
    let endpoint = decode_endpoint(&fleet_from_v1("endpoint/ep-1", endpoint).unwrap()).unwrap();
    assert_eq!(
        (endpoint.owner, endpoint.kind, endpoint.models[0].loaded),
        (Owner::Sidecar("s1".into()), EndpointKind::Ollama, true)
    );
    assert!(fleet_from_v1("other/x", b"{}").is_err());
}

#[test]
fn damaged_records_are_refused_with_a_reason() {
    let mut bytes = encode_task(full_task());
    bytes.truncate(bytes.len() / 2);
    assert!(decode_task(&bytes).is_err());
    assert!(
        decode_task(&pb::Task { id: vec![1, 2], ..Default::default() }.encode_to_vec()).unwrap_err().contains("16")
    );
    let no_spec = pb::Task { id: vec![0; 16], ..Default::default() }.encode_to_vec();
    assert_eq!(decode_task(&no_spec).unwrap_err(), "the task has no spec");
}
