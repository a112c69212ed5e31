//! Wiring tests: a hub and sidecars in this process, over real loopback sockets.

use std::time::Duration;

use agentcom_integration::{TestMesh, assert_eventually, shell};
use agentcom_proto::v1 as pb;
use reqwest::Method;
use serde_json::json;
use tonic::metadata::MetadataValue;

const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_task_runs_and_reports_output_and_exit_code() {
    let mesh = TestMesh::new().start().await;
    let ok = mesh.api.submit(shell("echo out; echo err >&2")).await;
    let failed = mesh.api.submit(shell("exit 7")).await;
    let ok = mesh.api.wait_final(ok["id"].as_str().unwrap(), PATIENCE).await;
    let failed = mesh.api.wait_final(failed["id"].as_str().unwrap(), PATIENCE).await;
    assert_eq!(ok["state"], "succeeded", "{ok}");
    assert_eq!(ok["outcome"]["stdout"], "out\n");
    assert_eq!(ok["outcome"]["stderr"], "err\n");
    assert_eq!(ok["attempt"], 1);
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["state_reason"], "exit code 7");
    assert_eq!(failed["outcome"]["exit"]["code"], 7);
    // Listings are summaries; the output itself comes with the single task (read from disk).
    let (status, listed) = mesh.api.request(Method::GET, "/api/v1/tasks?state=succeeded", None).await;
    assert_eq!(status, 200);
    let summary = &listed["tasks"][0];
    assert_eq!(
        (summary["outcome"]["stdout"].as_str(), summary["outcome"]["stdout_total_bytes"].as_u64()),
        (Some(""), Some(4))
    );
    mesh.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_nothing_is_stored() {
    let mesh = TestMesh::new().start().await;
    let cases = [
        (json!({}), 400, "invalid_argument", "exactly one of shell, llm, agent"),
        (json!({ "shell": { "argv": [] } }), 400, "invalid_argument", "needs argv or script"),
        (
            json!({ "shell": { "argv": ["x"] }, "priority": "asap" }),
            400,
            "invalid_argument",
            "not one of interactive, urgent",
        ),
        (json!({ "shell": { "argv": ["x"] }, "bogus": 1 }), 400, "invalid_argument", "unknown field"),
        (
            json!({ "shell": { "argv": ["x"] }, "limits": { "max_attempts": 1000 } }),
            400,
            "invalid_argument",
            "max_attempts",
        ),
        (
            json!({ "shell": { "argv": ["x"], "env": { "A-B": "1" } } }),
            400,
            "invalid_argument",
            "not a valid variable name",
        ),
        (json!({ "shell": { "argv": ["x"] }, "name": "n".repeat(300) }), 400, "invalid_argument", "at most 256"),
    ];
    for (body, status, code, needle) in cases {
        let (got, response) = mesh.api.request(Method::POST, "/api/v1/tasks", Some(body.clone())).await;
        assert_eq!(got, status, "{body} -> {response}");
        assert_eq!(response["error"]["code"], code, "{body} -> {response}");
        let message = response["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body} -> {message}");
    }
    let (status, body) = mesh.api.request(Method::GET, "/api/v1/tasks/not-an-id", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_argument")));
    let (status, body) = mesh.api.request(Method::GET, "/api/v1/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    let (status, body) = mesh.api.request(Method::GET, "/api/v1/tasks?state=sleeping", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_argument")));
    let (status, body) = mesh.api.request(Method::GET, "/api/v1/tasks", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["tasks"], json!([]), "nothing malformed was stored");
    mesh.stop().await;
}

#[tokio::test]
async fn http_refuses_missing_wrong_and_sidecar_tokens() {
    let mesh = TestMesh::new().start().await;
    let anonymous = mesh.api_with_token("");
    let wrong = mesh.api_with_token("agentcom_admin_0000");
    let sidecar = mesh.api_with_token(&mesh.join_token);
    for (api, status, code) in
        [(&anonymous, 401, "unauthenticated"), (&wrong, 401, "unauthenticated"), (&sidecar, 403, "permission_denied")]
    {
        for (method, path) in [
            (Method::GET, "/api/v1/tasks"),
            (Method::POST, "/api/v1/tasks"),
            (Method::GET, "/api/v1/agents"),
            (Method::GET, "/metrics"),
        ] {
            let (got, body) = api.request(method.clone(), path, Some(shell("true"))).await;
            assert_eq!(got, status, "{method} {path}: {body}");
            assert_eq!(body["error"]["code"], code);
        }
    }
    // Health probes are open.
    let (status, _) = anonymous.request(Method::GET, "/healthz", None).await;
    assert_eq!(status, 200);
    let (status, _) = anonymous.request(Method::GET, "/readyz", None).await;
    assert_eq!(status, 200);
    mesh.stop().await;
}

async fn admin_client(url: &str) -> pb::admin_client::AdminClient<tonic::transport::Channel> {
    pb::admin_client::AdminClient::connect(url.to_owned()).await.expect("connecting over gRPC")
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if !token.is_empty() {
        request.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {token}")).unwrap());
    }
    request
}

#[tokio::test]
async fn grpc_refuses_missing_wrong_and_sidecar_tokens_and_serves_admins() {
    let mesh = TestMesh::new().start().await;
    let mut client = admin_client(&mesh.url).await;
    for (token, code) in [
        ("", tonic::Code::Unauthenticated),
        ("agentcom_admin_0000", tonic::Code::Unauthenticated),
        (mesh.join_token.as_str(), tonic::Code::PermissionDenied),
    ] {
        let err = client.list_tasks(with_token(pb::ListTasksRequest::default(), token)).await.unwrap_err();
        assert_eq!(err.code(), code, "{token:?}: {err}");
    }
    // A sidecar session needs a join token too.
    let mut link = pb::agent_link_client::AgentLinkClient::connect(mesh.url.clone()).await.unwrap();
    let hello = pb::SidecarMessage {
        msg: Some(pb::sidecar_message::Msg::Hello(pb::Hello {
            sidecar_id: "x".into(),
            slots: 1,
            ..Default::default()
        })),
    };
    let err = link.session(with_token(tokio_stream::iter(vec![hello]), "wrong")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // The admin token works, and gRPC validates like HTTP.
    let spec = pb::TaskSpec {
        work: Some(pb::Work {
            kind: Some(pb::work::Kind::Shell(pb::ShellWork {
                argv: vec!["echo".into(), "grpc".into()],
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let submitted = client
        .submit_task(with_token(pb::SubmitTaskRequest { spec: Some(spec) }, &mesh.admin_token))
        .await
        .unwrap()
        .into_inner();
    let id = submitted.task.unwrap().id;
    let mut events = client
        .watch_task(with_token(pb::WatchTaskRequest { id: id.clone() }, &mesh.admin_token))
        .await
        .unwrap()
        .into_inner();
    let mut output = Vec::new();
    let mut last_state = pb::TaskState::Unspecified;
    while let Some(event) = events.message().await.unwrap() {
        match event.kind.unwrap() {
            pb::task_event::Kind::Output(chunk) => output.extend(chunk.data),
            pb::task_event::Kind::Snapshot(task) => last_state = task.state(),
            pb::task_event::Kind::Step(step) => panic!("shell work takes no agent steps: {step:?}"),
        }
    }
    assert_eq!(output, b"grpc\n");
    assert_eq!(last_state, pb::TaskState::Succeeded);
    let err = client
        .submit_task(with_token(pb::SubmitTaskRequest { spec: Some(pb::TaskSpec::default()) }, &mesh.admin_token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("work"), "{}", err.message());
    mesh.stop().await;
}

fn alive(pid: i32) -> bool {
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
        .unwrap_or(false);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() && !zombie
}

async fn read_pid(path: &std::path::Path) -> i32 {
    assert_eventually!(
        std::fs::read_to_string(path).is_ok_and(|s| s.ends_with('\n')),
        PATIENCE,
        "{} written",
        path.display()
    );
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn cancel_and_timeout_kill_grandchildren() {
    let mesh = TestMesh::new().start().await;
    let script = |name: &str| format!("sleep 300 & echo $! > {name}.pid; sleep 300");

    let running = mesh.api.submit(shell(&script("cancelled"))).await;
    let id = running["id"].as_str().unwrap();
    let grandchild = read_pid(&mesh.work_dir.join("cancelled.pid")).await;
    assert!(alive(grandchild));
    let (status, body) = mesh.api.request(Method::DELETE, &format!("/api/v1/tasks/{id}"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["task"]["state"], "cancelled");
    assert_eventually!(!alive(grandchild), PATIENCE, "the cancelled task's background sleep {grandchild} is gone");
    // The sidecar's report of the killed process is recorded, and the agent is free again.
    assert_eventually!(mesh.api.get(id).await["outcome"].is_object(), PATIENCE, "outcome recorded");
    assert_eq!(mesh.api.get(id).await["state"], "cancelled");

    let mut timed = shell(&script("timed"));
    timed["limits"] = json!({ "timeout_ms": 300 });
    let timed = mesh.api.submit(timed).await;
    let grandchild = read_pid(&mesh.work_dir.join("timed.pid")).await;
    let task = mesh.api.wait_final(timed["id"].as_str().unwrap(), PATIENCE).await;
    assert_eq!(task["state"], "failed");
    assert_eq!(task["outcome"]["timed_out"], true);
    assert!(task["state_reason"].as_str().unwrap().starts_with("timed out"), "{task}");
    assert_eventually!(!alive(grandchild), PATIENCE, "the timed-out task's background sleep {grandchild} is gone");

    // Cancelling a finished task is refused with a clear code.
    let (status, body) = mesh.api.request(Method::DELETE, &format!("/api/v1/tasks/{id}"), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("failed_precondition")), "{body}");
    mesh.stop().await;
}

#[tokio::test]
async fn queued_tasks_wait_for_a_sidecar_and_run_in_priority_order() {
    let mut mesh = TestMesh::new().sidecars(0).start().await;
    let mut ids = Vec::new();
    for (priority, name) in [("low", "l"), ("normal", "n"), ("urgent", "u"), ("high", "h")] {
        let mut body = shell(&format!("echo {name} >> order.txt"));
        body["priority"] = json!(priority);
        ids.push(mesh.api.submit(body).await["id"].as_str().unwrap().to_owned());
    }
    let (_, listed) = mesh.api.request(Method::GET, "/api/v1/tasks?state=queued", None).await;
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 4);
    // A queued task cancelled before any sidecar exists never runs.
    let doomed = mesh.api.submit(shell("echo doomed >> order.txt")).await["id"].as_str().unwrap().to_owned();
    let (status, cancelled) = mesh.api.request(Method::DELETE, &format!("/api/v1/tasks/{doomed}"), None).await;
    assert_eq!((status, cancelled["task"]["state"].as_str()), (200, Some("cancelled")));
    mesh.add_sidecar(1);
    for id in &ids {
        assert_eq!(mesh.api.wait_final(id, PATIENCE).await["state"], "succeeded");
    }
    assert_eq!(std::fs::read_to_string(mesh.work_dir.join("order.txt")).unwrap(), "u\nh\nn\nl\n");
    mesh.stop().await;
}

#[tokio::test]
async fn a_lost_sidecar_has_its_task_requeued_to_another() {
    let mut mesh = TestMesh::new().sidecars(1).slots(1).start().await;
    // The first attempt hangs; the second finishes.
    let body = shell(r#"echo "attempt $AGENTCOM_ATTEMPT"; if [ "$AGENTCOM_ATTEMPT" = 1 ]; then sleep 30; fi"#);
    let task = mesh.api.submit(body).await;
    let id = task["id"].as_str().unwrap().to_owned();
    // A watcher that stays through the retry sees each attempt's output from its own offset 0.
    let mut client = admin_client(&mesh.url).await;
    let mut events = client
        .watch_task(with_token(pb::WatchTaskRequest { id: id.clone() }, &mesh.admin_token))
        .await
        .unwrap()
        .into_inner();
    let watcher = tokio::spawn(async move {
        let mut outputs = Vec::new();
        while let Some(event) = events.message().await.unwrap() {
            if let Some(pb::task_event::Kind::Output(chunk)) = event.kind {
                outputs.push((chunk.attempt, chunk.offset, String::from_utf8(chunk.data).unwrap()));
            }
        }
        outputs
    });
    assert_eventually!(mesh.api.get(&id).await["state"] == "running", PATIENCE, "task running");
    let lost = mesh.sidecars.remove(0);
    lost.abort();
    assert_eventually!(mesh.api.get(&id).await["state"] == "queued", PATIENCE, "task requeued after the lease lapsed");
    assert!(mesh.api.get(&id).await["state_reason"].as_str().unwrap().contains("lease expired"));
    mesh.add_sidecar(1);
    let task = mesh.api.wait_final(&id, PATIENCE).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["attempt"], 2);
    assert_eq!(task["lease_generation"], 2);
    assert_eq!(task["outcome"]["stdout"], "attempt 2\n");
    let outputs = watcher.await.unwrap();
    assert_eq!(outputs.last(), Some(&(2, 0, "attempt 2\n".to_owned())), "{outputs:?}");
    mesh.stop().await;
}

fn fast_retries(config: &mut agentcom_hub::core::Config) {
    config.spec_defaults.backoff_base_ms = 10;
    config.spec_defaults.backoff_max_ms = 40;
}

#[tokio::test]
async fn retryable_exit_codes_are_retried_then_dead_lettered_and_the_dlq_can_retry_and_purge() {
    let mesh = TestMesh::new().config(fast_retries).start().await;
    let mut body = shell("echo try $AGENTCOM_ATTEMPT; exit 75");
    body["retry"] = json!({ "retry_on_exit_codes": [75] });
    body["limits"] = json!({ "max_attempts": 3 });
    let id = mesh.api.submit(body).await["id"].as_str().unwrap().to_owned();
    let task = mesh.api.wait_final(&id, PATIENCE).await;
    assert_eq!(task["state"], "dead_lettered", "{task}");
    assert_eq!(task["attempt"], 3);
    assert_eq!(task["state_reason"], "exit code 75 (attempt 3 of 3)");
    assert_eq!(task["outcome"]["stdout"], "try 3\n", "the last attempt's output is kept");

    let (status, listed) = mesh.api.request(Method::GET, "/api/v1/dlq", None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 1);
    let (status, shown) = mesh.api.request(Method::GET, &format!("/api/v1/dlq/{id}"), None).await;
    assert_eq!((status, shown["task"]["id"].as_str()), (200, Some(id.as_str())));

    // Retry: a fresh set of attempts under ever-increasing lease generations.
    let (status, retried) = mesh.api.request(Method::POST, &format!("/api/v1/dlq/{id}/retry"), None).await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["task"]["state"], "queued");
    assert_eq!(retried["task"]["attempt"], 0);
    let task = mesh.api.wait_final(&id, PATIENCE).await;
    assert_eq!((task["state"].as_str(), task["attempt"].as_u64()), (Some("dead_lettered"), Some(3)));
    assert_eq!(task["lease_generation"], 6);

    // Retrying what is not dead-lettered is refused; purging removes it for good.
    let done = mesh.api.submit(shell("true")).await["id"].as_str().unwrap().to_owned();
    mesh.api.wait_final(&done, PATIENCE).await;
    let (status, body) = mesh.api.request(Method::POST, &format!("/api/v1/dlq/{done}/retry"), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("failed_precondition")));
    let (status, body) = mesh.api.request(Method::DELETE, "/api/v1/dlq?older_than_ms=3600000", None).await;
    assert_eq!((status, body["purged"].as_u64()), (200, Some(0)), "nothing is an hour old");
    let (status, body) = mesh.api.request(Method::DELETE, "/api/v1/dlq", None).await;
    assert_eq!((status, body["purged"].as_u64()), (200, Some(1)));
    assert!(mesh.api.try_get(&id).await.is_none());
    assert!(mesh.api.try_get(&done).await.is_some(), "only dead letters are purged");
    mesh.stop().await;
}

#[tokio::test]
async fn a_task_not_started_by_its_deadline_expires_into_the_dlq() {
    let mesh = TestMesh::new().sidecars(0).start().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let mut body = shell("echo never");
    body["limits"] = json!({ "deadline_unix_ms": now + 300 });
    let id = mesh.api.submit(body).await["id"].as_str().unwrap().to_owned();
    let task = mesh.api.wait_final(&id, PATIENCE).await;
    assert_eq!((task["state"].as_str(), task["state_reason"].as_str()), (Some("dead_lettered"), Some("expired")));
    assert_eq!(task["attempt"], 0);

    let mut late = shell("echo late");
    late["limits"] = json!({ "deadline_unix_ms": now - 1_000 });
    let (status, body) = mesh.api.request(Method::POST, "/api/v1/tasks", Some(late)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("deadline"), "{body}");
    mesh.stop().await;
}

#[tokio::test]
async fn racing_submits_with_one_idempotency_key_make_one_task_until_the_key_expires() {
    let mesh =
        TestMesh::new().sidecars(0).config(|c| c.idempotency_retention = Duration::from_millis(500)).start().await;
    let submits = (0..32).map(|_| {
        let api = mesh.api.clone();
        tokio::spawn(async move {
            let mut body = shell("echo once");
            body["idempotency_key"] = json!("deploy-42");
            api.request(Method::POST, "/api/v1/tasks", Some(body)).await
        })
    });
    let answers: Vec<(u16, serde_json::Value)> =
        futures_util::future::join_all(submits).await.into_iter().map(Result::unwrap).collect();
    let ids: std::collections::HashSet<&str> = answers.iter().map(|(_, b)| b["task"]["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "one key, one task: {ids:?}");
    assert_eq!(answers.iter().filter(|(status, b)| *status == 201 && b["existing"] == false).count(), 1);
    assert_eq!(answers.iter().filter(|(status, b)| *status == 200 && b["existing"] == true).count(), 31);
    let first = ids.into_iter().next().unwrap().to_owned();

    tokio::time::sleep(Duration::from_millis(600)).await; // Past the retention window.
    let mut body = shell("echo again");
    body["idempotency_key"] = json!("deploy-42");
    let again = mesh.api.submit(body).await;
    assert_ne!(again["id"].as_str().unwrap(), first, "an expired key makes a new task");
    mesh.stop().await;
}

#[tokio::test]
async fn dependencies_run_in_order_and_failures_cascade() {
    let mesh = TestMesh::new().slots(4).start().await;
    let submit_after = |script: &str, after: Vec<&str>| {
        let mut body = shell(script);
        body["depends_on"] = json!(after);
        let api = mesh.api.clone();
        async move { api.submit(body).await["id"].as_str().unwrap().to_owned() }
    };
    let a = submit_after("sleep 0.3; echo a >> order.txt", vec![]).await;
    let b = submit_after("echo b >> order.txt", vec![&a]).await;
    let c = submit_after("echo c >> order.txt", vec![&b, &a]).await;
    assert_eq!(mesh.api.get(&c).await["state"], "waiting");
    let failing = submit_after("exit 1", vec![]).await;
    let d = submit_after("echo d >> never.txt", vec![&failing, &a]).await;
    let e = submit_after("echo e >> never.txt", vec![&d]).await;

    for id in [&a, &b, &c] {
        assert_eq!(mesh.api.wait_final(id, PATIENCE).await["state"], "succeeded");
    }
    assert_eq!(std::fs::read_to_string(mesh.work_dir.join("order.txt")).unwrap(), "a\nb\nc\n");
    let d = mesh.api.wait_final(&d, PATIENCE).await;
    assert_eq!(d["state"], "cancelled");
    assert_eq!(d["state_reason"], format!("dependency_failed: task {failing} is failed"));
    let e = mesh.api.wait_final(&e, PATIENCE).await;
    assert!(e["state_reason"].as_str().unwrap().starts_with("dependency_failed"), "{e}");
    assert!(!mesh.work_dir.join("never.txt").exists());

    // Unknown dependencies are refused (and a new task cannot be depended on before it exists,
    // so no cycle can form).
    let mut body = shell("true");
    body["depends_on"] = json!(["01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    let (status, body) = mesh.api.request(Method::POST, "/api/v1/tasks", Some(body)).await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("does not exist"), "{body}");
    mesh.stop().await;
}

#[tokio::test]
async fn the_event_stream_follows_tasks_agents_hosts_and_the_queue() {
    let mesh = TestMesh::new().sidecars(2).start().await;
    let followed = mesh.api.follow("/api/v1/events");
    assert_eventually!(followed.events().first().map(|e| e.0.clone()) == Some("ready".into()), PATIENCE, "ready first");
    let task = mesh.api.submit(shell("sleep 0.3; echo done")).await;
    let id = task["id"].as_str().unwrap().to_owned();
    mesh.api.wait_final(&id, PATIENCE).await;
    let states = |events: &[(String, serde_json::Value)]| -> Vec<String> {
        let mine = events.iter().filter(|(e, t)| e == "task" && t["id"] == id.as_str());
        mine.map(|(_, t)| t["state"].as_str().unwrap().to_owned()).collect()
    };
    assert_eventually!(
        states(&followed.events()).last().map(String::as_str) == Some("succeeded"),
        PATIENCE,
        "the task's end arrived"
    );
    let events = followed.events();
    let seen = states(&events);
    assert!(seen.iter().any(|s| s == "running"), "the task's changes, coalesced: {seen:?}");
    let working = events.iter().any(|(e, a)| e == "agent" && a["state"] == "working" && a["task_id"] == id.as_str());
    assert!(working, "an agent event names the task it works on: {events:?}");

    // A drain is a host event; the queue's counts come at most once a second.
    let (status, _) =
        mesh.api.request(Method::POST, &format!("/api/v1/hosts/{}/drain", mesh.sidecars[0].id), None).await;
    assert_eq!(status, 200);
    let drained = |events: &[(String, serde_json::Value)]| {
        events.iter().any(|(e, h)| e == "host" && h["id"] == mesh.sidecars[0].id.as_str() && !h["cordon"].is_null())
    };
    assert_eventually!(drained(&followed.events()), PATIENCE, "the drain arrived as a host event");
    assert_eventually!(
        followed.events().iter().any(|(e, q)| e == "queue" && q["tasks"] == 1 && q["ready_by_lane"]["normal"] == 0),
        PATIENCE,
        "a queue event"
    );
    // The stream shapes are the API's: the same task JSON as a listing.
    let (_, listed) = mesh.api.request(Method::GET, "/api/v1/tasks", None).await;
    let last = followed.events().into_iter().rev().find(|(e, t)| e == "task" && t["id"] == id.as_str()).unwrap().1;
    assert_eq!(last, listed["tasks"][0], "an event's task is the listing's");
}

/// Reads a response body to its end in the background; the instant it ended comes back.
fn until_closed(response: reqwest::Response) -> tokio::task::JoinHandle<std::time::Instant> {
    use futures_util::StreamExt;
    tokio::spawn(async move {
        let mut body = response.bytes_stream();
        while let Some(Ok(_)) = body.next().await {}
        std::time::Instant::now()
    })
}

#[tokio::test]
async fn a_revoked_tokens_open_event_streams_close_within_a_second() {
    let mesh = TestMesh::new().sidecars(0).start().await;
    let (status, made) =
        mesh.api.request(Method::POST, "/api/v1/tokens", Some(json!({ "role": "viewer", "name": "wall" }))).await;
    assert_eq!(status, 201, "{made}");
    let (secret, token_id) =
        (made["secret"].as_str().unwrap().to_owned(), made["token"]["id"].as_str().unwrap().to_owned());
    let waiting = mesh.api.submit(shell("true")).await["id"].as_str().unwrap().to_owned(); // No sidecar: it waits.
    let http = agentcom_integration::http_client();
    let open = |path: String| http.get(format!("{}{path}", mesh.url)).bearer_auth(&secret).send();
    let hub_events = until_closed(open("/api/v1/events".into()).await.unwrap());
    let task_events = until_closed(open(format!("/api/v1/tasks/{waiting}/events")).await.unwrap());
    // The admin's own stream is not touched.
    let admin_events = until_closed(
        http.get(format!("{}/api/v1/events", mesh.url)).bearer_auth(&mesh.api.token).send().await.unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!hub_events.is_finished() && !task_events.is_finished(), "the streams stay open while the token is valid");

    let revoked_at = std::time::Instant::now();
    let (status, body) = mesh.api.request(Method::DELETE, &format!("/api/v1/tokens/{token_id}"), None).await;
    assert_eq!(status, 200, "{body}");
    for stream in [hub_events, task_events] {
        let closed = tokio::time::timeout(Duration::from_secs(1), stream).await.expect("closed within 1 s").unwrap();
        assert!(closed.duration_since(revoked_at) < Duration::from_secs(1));
    }
    assert!(!admin_events.is_finished(), "another token's stream goes on");
    let (status, _) = mesh.api_with_token(&secret).request(Method::GET, "/api/v1/tasks", None).await;
    assert_eq!(status, 401);
    mesh.stop().await;
}
