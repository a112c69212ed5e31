use proptest::prelude::*;
use prost::Message;

use super::*;
use crate::domain::{AgentStep, Exit, Outcome, Stream, TaskSpec, TokenPrice, TraceParent};
use crate::fleet::{Endpoint, EndpointKind, Owner, Resources, endpoint_id};

fn assignment() -> Assignment {
    let mut spec = TaskSpec::shell(vec!["echo".into(), "hi".into()], &SpecDefaults::default());
    spec.limits.timeout_ms = Some(5_000);
    Assignment {
        task_id: TaskId::new(7),
        lease_generation: 3,
        attempt: 2,
        agent_id: "s1/0".into(),
        spec,
        endpoint_id: Some("e1".into()),
        model: Some("llama3.2:3b".into()),
        price: Some(TokenPrice { input: 1.0, output: 2.0 }),
        judge: Some(("judge:1b".into(), "e2".into())),
        prices: vec![("a".into(), TokenPrice { input: 0.5, output: 1.0 }), ("b".into(), TokenPrice::default())],
        trace: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse::<TraceParent>().unwrap()),
    }
}

fn hello() -> Hello {
    Hello {
        sidecar_id: "s1".into(),
        hostname: "box".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        version: "0.1.0".into(),
        slots: 4,
        capabilities: vec!["shell".into(), "llm".into()],
        tags: vec!["gpu".into()],
        running: vec![RunningTask { task_id: TaskId::new(1), lease_generation: 2, agent_id: "s1/1".into() }],
        containment: "cgroup-v2".into(),
        instance: 99,
        repo_allow: vec!["/srv/repo".into()],
    }
}

/// Through the wire and back, as the other end decodes it.
fn hub_to_sidecar(message: ToSidecar) -> ToSidecar {
    let bytes = to_sidecar_into_pb(message).encode_to_vec();
    to_sidecar_from_pb(pb::HubMessage::decode(bytes.as_slice()).unwrap(), &SpecDefaults::default()).unwrap()
}

fn sidecar_to_hub(message: FromSidecar) -> FromSidecar {
    let bytes = from_sidecar_into_pb(message).encode_to_vec();
    from_sidecar_from_pb("s1", pb::SidecarMessage::decode(bytes.as_slice()).unwrap()).unwrap()
}

#[test]
fn what_the_hub_says_arrives_as_it_was_said() {
    let id = TaskId::new(5);
    for message in [
        ToSidecar::Assign(Box::new(assignment())),
        ToSidecar::Cancel { task_id: id, lease_generation: 4, reason: "cancelled by a user".into() },
        ToSidecar::Drain { deadline_unix_ms: Some(1_000) },
        ToSidecar::Drain { deadline_unix_ms: None },
        ToSidecar::Stored { task_id: id, lease_generation: 4 },
        ToSidecar::Preload { endpoint_id: "e1".into(), model: "m".into(), keep_alive: Some("10m".into()) },
        ToSidecar::Preload { endpoint_id: "e1".into(), model: "m".into(), keep_alive: None },
    ] {
        assert_eq!(hub_to_sidecar(message.clone()), message);
    }
    let welcome = Welcome {
        sidecar_id: "s1".into(),
        agent_ids: vec!["s1/0".into()],
        heartbeat_interval: Duration::from_millis(500),
        lease_ttl: Duration::from_secs(30),
        hub_version: "0.1.0".into(),
    };
    assert_eq!(welcome_from_pb(welcome_into_pb(welcome.clone())).unwrap(), welcome);
}

#[test]
fn what_a_sidecar_says_arrives_as_it_was_said() {
    let id = TaskId::new(5);
    let mut outcome = Outcome::empty();
    outcome.exit = Exit::Code(3);
    outcome.stdout = b"out".to_vec();
    let step = AgentStep { round: 1, tool: "read_file".into(), summary: "src/lib.rs".into(), ..Default::default() };
    let owner = Owner::Sidecar("s1".into());
    let endpoint = Endpoint {
        id: endpoint_id(&owner, "http://127.0.0.1:11434"),
        url: "http://127.0.0.1:11434".into(),
        kind: EndpointKind::Ollama,
        owner,
        healthy: true,
        version: "0.5.1".into(),
        error: None,
        models: Vec::new(),
        checked_unix_ms: 10,
        parallel: 2,
    };
    for message in [
        FromSidecar::Heartbeat { sent_unix_ms: 9, running: hello().running },
        FromSidecar::Started { task_id: id, lease_generation: 1, pid: 42 },
        FromSidecar::Output {
            task_id: id,
            lease_generation: 1,
            stream: Stream::Stderr,
            offset: 8,
            data: b"x".to_vec(),
        },
        FromSidecar::Finished { task_id: id, lease_generation: 1, outcome: Box::new(outcome) },
        FromSidecar::Progress {
            task_id: id,
            lease_generation: 1,
            blocked: true,
            verifying: false,
            message: "loading the model".into(),
            step: Some(Box::new(step)),
            service: None,
        },
        FromSidecar::Progress {
            task_id: id,
            lease_generation: 1,
            blocked: false,
            verifying: false,
            message: "service restarting".into(),
            step: None,
            service: Some(Box::new(crate::domain::ServiceStatus {
                state: crate::domain::ServiceState::Restarting,
                ports: [("web".to_owned(), 41234), ("admin".to_owned(), 41235)].into(),
                restarts: 2,
                evidence: "exited with code 3: boom".into(),
                started_unix_ms: 5,
                ready_unix_ms: Some(6),
            })),
        },
        FromSidecar::Resources(Box::new(Resources { at_unix_ms: 3, cpu_percent: 12.5, ..Resources::default() })),
        FromSidecar::Models(vec![endpoint]),
        FromSidecar::Preloaded { endpoint_id: "e1".into(), model: "m".into(), load_ms: 700, error: None },
        FromSidecar::Preloaded { endpoint_id: "e1".into(), model: "m".into(), load_ms: 0, error: Some("no".into()) },
    ] {
        assert_eq!(sidecar_to_hub(message.clone()), message);
    }
    let hello = hello();
    let Some(SideMsg::Hello(wire)) = hello_into_pb(hello.clone()).msg else { panic!("not a hello") };
    assert_eq!(hello_from_pb(wire).unwrap(), hello);
}

#[test]
fn a_hello_out_of_bounds_is_refused_saying_what() {
    let refused = |change: fn(&mut pb::Hello)| {
        let Some(SideMsg::Hello(mut wire)) = hello_into_pb(hello()).msg else { panic!("not a hello") };
        change(&mut wire);
        hello_from_pb(wire).unwrap_err().to_string()
    };
    assert!(refused(|h| h.sidecar_id = "a b".into()).contains("hello.sidecar_id"));
    assert!(refused(|h| h.slots = 0).contains("between 1 and 1024"));
    assert!(refused(|h| h.tags = vec![String::new(); 257]).contains("too many"));
    assert!(refused(|h| h.running[0].task_id = "T".into()).contains("not a task id"));
}

#[test]
fn an_assignment_the_sidecar_cannot_run_names_its_task() {
    let shell = pb::ShellWork { argv: vec!["true".into()], script: "true".into(), ..Default::default() };
    let spec = pb::TaskSpec { work: Some(pb::Work { kind: Some(pb::work::Kind::Shell(shell)) }), ..Default::default() };
    let id = TaskId::new(3);
    let assign = pb::Assign { task_id: id.to_string(), lease_generation: 2, spec: Some(spec), ..Default::default() };
    let message = pb::HubMessage { msg: Some(HubMsg::Assign(assign)) };
    match to_sidecar_from_pb(message, &SpecDefaults::default()) {
        Err(Refused::Assignment { task_id, lease_generation: 2, error }) if task_id == id => {
            assert_eq!(error.to_string(), "invalid work.shell: takes argv or script, not both")
        }
        other => panic!("{other:?}"),
    }
    let second = welcome_into_pb(Welcome {
        sidecar_id: "s1".into(),
        agent_ids: Vec::new(),
        heartbeat_interval: Duration::from_secs(1),
        lease_ttl: Duration::from_secs(1),
        hub_version: String::new(),
    });
    assert!(matches!(to_sidecar_from_pb(second, &SpecDefaults::default()), Err(Refused::Message(_))));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// Whatever a sidecar sends, decoded and converted: a message or an error, never a panic.
    #[test]
    fn sidecar_messages_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(message) = pb::SidecarMessage::decode(bytes.as_slice()) {
            match message.msg {
                Some(SideMsg::Hello(hello)) => drop(hello_from_pb(hello)),
                _ => drop(from_sidecar_from_pb("fuzz", message)),
            }
        }
    }

    /// Whatever the hub sends: a message or a refusal, never a panic.
    #[test]
    fn hub_messages_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(message) = pb::HubMessage::decode(bytes.as_slice()) {
            drop(to_sidecar_from_pb(message, &SpecDefaults::default()));
        }
    }
}
