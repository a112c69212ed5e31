//! The hub's edge under abuse and bad input: idle-connection floods, oversized headers, rate
//! limits, and requests that must be refused with a JSON error naming what is wrong.

use std::time::{Duration, Instant};

use agentcom_integration::process::memory;
use agentcom_integration::{HubProcess, TestMesh, assert_eventually, shell};
use agentcom_proto::v1 as pb;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const PATIENCE: Duration = Duration::from_secs(30);

/// The best of three tries of `f`, each timed: one slow try on a busy 2-core machine does not
/// fail the test, three do.
async fn best_of_three<F, Fut>(mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        f().await;
        best = best.min(start.elapsed());
    }
    best
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// A gRPC sidecar session up to its welcome, on a fresh connection.
async fn join(url: &str, token: &str, id: &str) {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned()).unwrap().connect().await.unwrap();
    let mut client = pb::agent_link_client::AgentLinkClient::new(channel);
    let hello = pb::Hello { sidecar_id: id.to_owned(), hostname: "flood-test".into(), slots: 1, ..Default::default() };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::SidecarMessage { msg: Some(pb::sidecar_message::Msg::Hello(hello)) }).await.unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut inbound = client.session(request).await.unwrap().into_inner();
    match inbound.message().await.unwrap() {
        Some(pb::HubMessage { msg: Some(pb::hub_message::Msg::Welcome(_)) }) => {}
        other => panic!("expected a welcome, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_flood_from_one_address_leaves_the_hub_answering_everyone_else() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &[]).await;
    let join_token = std::fs::read_to_string(hub.join_token_file()).unwrap().trim().to_owned();
    let (rss_before, _) = memory(hub.pid());

    // 5,000 connections from 127.0.0.2 that never send a whole request: half stop inside the
    // headers, half never send a byte (so not even the HTTP version is known).
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", hub.port).parse().unwrap();
    let mut flood = Vec::new();
    for n in 0..5_000 {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let Ok(mut stream) = socket.connect(addr).await else { continue };
        if n % 2 == 0 {
            let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: flood\r\nX-Slow: ").await;
        }
        flood.push(stream);
    }
    assert!(flood.len() >= 4_900, "the flood could open only {} connections", flood.len());
    let limits = agentcom_hub::edge::Limits::for_this_process();
    let files = open_files(hub.pid());
    let (rss_peak, _) = memory(hub.pid());

    let client = || agentcom_integration::http().pool_max_idle_per_host(0).build().unwrap();
    let health = best_of_three(|| async {
        let response = client().get(format!("{}/healthz", hub.url)).send().await.unwrap();
        assert!(response.status().is_success());
    })
    .await;
    let submit = best_of_three(|| async {
        let response = client()
            .post(format!("{}/api/v1/tasks", hub.url))
            .bearer_auth(&hub.api.token)
            .json(&shell("true"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
    })
    .await;
    let mut n = 0;
    let joined = best_of_three(|| {
        n += 1;
        let id = format!("flood-side-{n}");
        let (url, token) = (hub.url.clone(), join_token.clone());
        async move { join(&url, &token, &id).await }
    })
    .await;
    eprintln!(
        "flood of {}: hub open files {files} (cap {}), healthz {health:?}, submit {submit:?}, join {joined:?}",
        flood.len(),
        limits.max_connections
    );
    assert!(files < limits.max_connections, "{files} open files, over the cap of {}", limits.max_connections);
    assert!(files < 1_000, "{files} open files: the flood was not capped per address");
    assert!(health < Duration::from_millis(100), "healthz took {health:?} during the flood");
    assert!(submit < Duration::from_millis(100), "a submit took {submit:?} during the flood");
    assert!(joined < Duration::from_millis(100), "a sidecar join took {joined:?} during the flood");

    drop(flood);
    let base = open_files(hub.pid());
    assert_eventually!(open_files(hub.pid()) <= base, PATIENCE, "the hub closed the flood's connections");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_after, _) = memory(hub.pid());
    eprintln!(
        "hub RSS: before {} MiB, at the flood's peak {} MiB, after {} MiB",
        rss_before >> 20,
        rss_peak >> 20,
        rss_after >> 20
    );
    assert!(rss_peak < rss_before + (64 << 20), "the flood cost {} MiB", (rss_peak - rss_before) >> 20);
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed_after_the_header_timeout() {
    let mesh =
        TestMesh::new().sidecars(0).serve_options(|o| o.edge.header_timeout = Duration::from_millis(300)).start().await;
    let addr = mesh.url.trim_start_matches("http://").to_owned();
    let mut partial = TcpStream::connect(&addr).await.unwrap();
    partial.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    for stream in [&mut partial, &mut silent] {
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(_)) | Ok(Err(_))), "the connection was still open after 5 s");
    }
    // A connection that finished its request is not cut.
    let (status, _) = mesh.api.request(reqwest::Method::GET, "/api/v1/queue", None).await;
    assert_eq!(status, 200);
    mesh.stop().await;
}

#[tokio::test]
async fn oversized_headers_get_431_with_the_json_error() {
    let mesh = TestMesh::new().sidecars(0).start().await;
    let addr = mesh.url.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let big = "x".repeat(1 << 20);
    let request = format!("GET /api/v1/queue HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await.unwrap().unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    assert!(response.contains(r#""code":"invalid_argument""#), "{response}");
    mesh.stop().await;
}

#[tokio::test]
async fn every_error_status_has_a_json_body_405_included() {
    let mesh = TestMesh::new().sidecars(0).start().await;
    let (status, body) = mesh.api.request(reqwest::Method::PUT, "/api/v1/tasks", Some(json!({}))).await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("PUT"), "{body}");
    let (status, body) = mesh.api.request(reqwest::Method::GET, "/api/v1/nothing-here", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    mesh.stop().await;
}

#[tokio::test]
async fn a_token_past_its_rate_gets_429_with_retry_after() {
    let mesh = TestMesh::new()
        .sidecars(0)
        .serve_options(|o| o.rate_per_token = agentcom_hub::ratelimit::Rate::per_second(5))
        .start()
        .await;
    let client = agentcom_integration::http_client();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..15 {
        let response =
            client.get(format!("{}/api/v1/queue", mesh.url)).bearer_auth(&mesh.admin_token).send().await.unwrap();
        statuses.push(response.status().as_u16());
        if response.status().as_u16() == 429 {
            retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited", "{body}");
        }
    }
    // A burst of twice the rate, less the request the mesh made while starting.
    let passed = statuses.iter().filter(|&&s| s == 200).count();
    assert!((9..=10).contains(&passed), "a burst of twice the rate: {statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    // Health checks are not rate limited.
    for _ in 0..20 {
        assert!(client.get(format!("{}/healthz", mesh.url)).send().await.unwrap().status().is_success());
    }
    mesh.stop().await;
}

#[tokio::test]
async fn submits_past_the_storage_backlog_get_503_with_retry_after() {
    // A backlog bound of zero: storage is always "behind", so every submit is refused.
    let mesh = TestMesh::new().sidecars(0).config(|c| c.max_write_backlog = 0).start().await;
    let response = agentcom_integration::http_client()
        .post(format!("{}/api/v1/tasks", mesh.url))
        .bearer_auth(&mesh.admin_token)
        .json(&shell("true"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "resource_exhausted", "{body}");
    mesh.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_reused_with_another_body_is_a_conflict_naming_the_first_task() {
    let mesh = TestMesh::new().sidecars(0).start().await;
    let mut body = shell("echo one");
    body["idempotency_key"] = json!("nightly-build");
    let first = mesh.api.submit(body.clone()).await;
    let (status, again) = mesh.api.request(reqwest::Method::POST, "/api/v1/tasks", Some(body)).await;
    assert_eq!(status, 200, "the same body is answered with the first task: {again}");
    assert_eq!(again["task"]["id"], first["id"]);

    let mut other = shell("echo two");
    other["idempotency_key"] = json!("nightly-build");
    let (status, conflict) = mesh.api.request(reqwest::Method::POST, "/api/v1/tasks", Some(other)).await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["error"]["code"], "conflict");
    let message = conflict["error"]["message"].as_str().unwrap();
    assert!(message.contains(first["id"].as_str().unwrap()), "{message}");
    mesh.stop().await;
}

#[tokio::test]
async fn out_of_range_limits_and_exit_codes_are_refused_naming_the_field() {
    let mesh = TestMesh::new().sidecars(0).start().await;
    let cases = [
        (json!({ "limits": { "timeout_ms": 0 } }), "limits.timeout_ms"),
        (json!({ "limits": { "max_attempts": 0 } }), "limits.max_attempts"),
        (json!({ "limits": { "max_output_bytes": 0 } }), "limits.max_output_bytes"),
        (json!({ "limits": { "max_attempts": 101 } }), "limits.max_attempts"),
        (json!({ "limits": { "max_memory_bytes": 1 } }), "limits.max_memory_bytes"),
        (json!({ "retry": { "retry_on_exit_codes": [-1] } }), "retry.retry_on_exit_codes"),
        (json!({ "retry": { "retry_on_exit_codes": [256] } }), "retry.retry_on_exit_codes"),
        (json!({ "retry": { "backoff_base_ms": 0 } }), "retry.backoff_base_ms"),
    ];
    for (extra, field) in cases {
        let mut body = shell("true");
        for (key, value) in extra.as_object().unwrap() {
            body[key] = value.clone();
        }
        let (status, answer) = mesh.api.request(reqwest::Method::POST, "/api/v1/tasks", Some(body.clone())).await;
        assert_eq!(status, 400, "{body} was accepted: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: the error {message:?} does not name {field}");
    }
    mesh.stop().await;
}

#[tokio::test]
async fn list_limits_must_be_between_1_and_1000() {
    let mesh = TestMesh::new().sidecars(0).start().await;
    for path in ["/api/v1/tasks?limit=0", "/api/v1/tasks?limit=1001", "/api/v1/dlq?limit=0"] {
        let (status, body) = mesh.api.request(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("limit"), "{body}");
    }
    let (status, _) = mesh.api.request(reqwest::Method::GET, "/api/v1/tasks?limit=1", None).await;
    assert_eq!(status, 200);
    mesh.stop().await;
}

#[tokio::test]
async fn a_cwd_outside_the_work_root_fails_the_task_without_running_it() {
    let mesh = TestMesh::new().start().await;
    let body = json!({ "shell": { "argv": ["pwd"], "cwd": "../../../../etc" } });
    let task = mesh.api.submit(body).await;
    let task = mesh.api.wait_final(task["id"].as_str().unwrap(), PATIENCE).await;
    assert_eq!(task["state"], "failed", "{task}");
    let error = task["outcome"]["error"].as_str().unwrap();
    assert!(error.contains("outside the sidecar's work directory"), "{error}");
    assert_eq!(task["outcome"]["stdout"], "", "nothing ran: {task}");
    mesh.stop().await;
}

#[tokio::test]
async fn an_oversized_body_gets_413_naming_the_limit() {
    let mesh = TestMesh::new().sidecars(0).start().await;
    let mut body = shell("true");
    body["context"] = json!({ "notes": "n".repeat(9 * 1024 * 1024) });
    let (status, answer) = mesh.api.request(reqwest::Method::POST, "/api/v1/tasks", Some(body)).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "payload_too_large");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("8388608 bytes") && message.contains("8 MiB"), "{message}");
    mesh.stop().await;
}
