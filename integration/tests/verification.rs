//! Verification end to end: a hub and a sidecar on loopback run shell work whose verification
//! steps check real files, a real git repository, the work's output, a test command and a
//! loopback HTTP server; the report comes back with the task, and a failed step fails it with
//! `verification_failed`, once, without a retry.

use std::time::Duration;

use agentcom_integration::{TestMesh, shell};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(60);

/// A loopback HTTP server answering `/ok` with 200 and anything else with 503.
async fn health_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/ok", axum::routing::get(|| async { "ok" }))
        .fallback(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down") });
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn steps(report: &Value) -> Vec<(String, bool)> {
    report["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps: {report}"))
        .iter()
        .map(|s| (s["kind"].as_str().unwrap().to_owned(), s["passed"].as_bool().unwrap()))
        .collect()
}

const GIT: &str = "git -c user.email=t@example.com -c user.name=t";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_step_passes_and_fails_on_real_files_repositories_and_servers() {
    let mesh = TestMesh::new().sidecars(1).start().await;
    let url = health_server().await;
    // A git repository in the work directory, committed clean.
    let init = mesh
        .api
        .submit(shell(&format!("rm -rf repo && git init -q repo && cd repo && {GIT} commit -q --allow-empty -m init")))
        .await;
    let init = mesh.api.wait_final(init["id"].as_str().unwrap(), PATIENCE).await;
    assert_eq!(init["state"], "succeeded", "{init}");

    // The work writes a file, commits it and prints; every step holds.
    let passing = json!({
        "shell": { "argv": ["sh", "-c", format!("echo hi > out.txt && {GIT} add out.txt && {GIT} commit -q -m out && echo 'done 3 files'")], "cwd": "repo" },
        "verification": [
            { "file_exists": "out.txt" },
            { "command_succeeds": { "argv": ["test", "-s", "out.txt"] } },
            { "test_passes": { "argv": ["sh", "-c", "echo 'running 2 tests'; echo 'test result: ok. 2 passed; 0 failed'"] } },
            "git_clean",
            { "output_contains": { "text": "done" } },
            { "output_contains": { "regex": "done \\d+ files" } },
            { "http_ok": format!("{url}/ok") },
        ],
    });
    let task = mesh.api.submit(passing).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let done = mesh.api.wait_final(&id, PATIENCE).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let report = &done["outcome"]["verification"];
    assert_eq!(report["verdict"], "passed", "{report}");
    let kinds = [
        "file_exists",
        "command_succeeds",
        "test_passes",
        "git_clean",
        "output_contains",
        "output_contains",
        "http_ok",
    ];
    assert_eq!(steps(report), kinds.iter().map(|k| (k.to_string(), true)).collect::<Vec<_>>());
    assert_eq!(report["steps"][2]["summary"], "test result: ok. 2 passed; 0 failed", "{report}");
    assert_eq!(report["steps"][6]["evidence"], "HTTP 200 OK");
    // The work leaves the tree dirty and prints something else; every step fails.
    let failing = json!({
        "shell": { "argv": ["sh", "-c", "echo new > new.txt; echo 'nothing here'"], "cwd": "repo" },
        "verification": [
            { "file_exists": "missing.txt" },
            { "command_succeeds": { "argv": ["sh", "-c", "echo broken >&2; exit 3"] } },
            { "test_passes": { "argv": ["sh", "-c", "echo 'test result: FAILED. 1 passed; 1 failed'; exit 101"] } },
            "git_clean",
            { "output_contains": { "text": "done" } },
            { "output_contains": { "regex": "^done" } },
            { "http_ok": format!("{url}/down") },
        ],
    });
    let task = mesh.api.submit(failing).await;
    let done = mesh.api.wait_final(task["id"].as_str().unwrap(), PATIENCE).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["attempt"], 1, "a verification failure is not retried: {done}");
    let reason = done["state_reason"].as_str().unwrap();
    assert!(
        reason.starts_with(
            "verification_failed: file_exists missing.txt: missing.txt does not exist (and 6 more failed steps)"
        ),
        "{reason}"
    );
    let report = &done["outcome"]["verification"];
    assert_eq!(report["verdict"], "failed");
    assert_eq!(steps(report), kinds.iter().map(|k| (k.to_string(), false)).collect::<Vec<_>>());
    let evidence = |n: usize| report["steps"][n]["evidence"].as_str().unwrap().to_owned();
    assert!(evidence(1).starts_with("exit code 3; output:\nbroken"), "{}", evidence(1));
    assert_eq!(report["steps"][2]["summary"], "test result: FAILED. 1 passed; 1 failed");
    assert!(evidence(3).contains("?? new.txt"), "{}", evidence(3));
    assert!(evidence(4).contains("\"done\" is not in the 13 bytes of output"), "{}", evidence(4));
    assert_eq!(evidence(6), "HTTP 503 Service Unavailable");

    // Work that fails is not verified at all.
    let broken = json!({ "shell": { "argv": ["false"] }, "verification": [{ "file_exists": "x" }] });
    let task = mesh.api.submit(broken).await;
    let done = mesh.api.wait_final(task["id"].as_str().unwrap(), PATIENCE).await;
    assert_eq!((done["state"].as_str(), done["state_reason"].as_str()), (Some("failed"), Some("exit code 1")));
    assert!(done["outcome"]["verification"].is_null(), "{done}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_that_would_reach_outside_are_refused_at_submit() {
    let mesh = TestMesh::new().sidecars(0).start().await;
    for (step, why) in [
        (json!({ "file_exists": "../etc/passwd" }), "no `..`"),
        (json!({ "file_exists": "/etc/passwd" }), "relative"),
        (json!({ "http_ok": "http://example.com/" }), "loopback"),
        (json!({ "output_contains": { "regex": "(" } }), "compile"),
    ] {
        let body = json!({ "shell": { "argv": ["true"] }, "verification": [step] });
        let (status, answer) = mesh.api.request(reqwest::Method::POST, "/api/v1/tasks", Some(body)).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer.to_string().contains(why), "{answer}");
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubctl_submits_checks_waits_on_them_and_shows_the_report() {
    let mesh = TestMesh::new().sidecars(1).start().await;
    let hubctl =
        |args: &'static [&'static str]| agentcom_integration::process::hubctl(&mesh.url, &mesh.api.token, args);
    let passed = hubctl(&[
        "submit",
        "--verify",
        "file_exists=out.txt",
        "--verify",
        "command_succeeds=test -s out.txt",
        "--verify",
        "output_contains=written",
        "--wait",
        "--",
        "sh",
        "-c",
        "echo hi > out.txt && echo written",
    ])
    .await;
    assert!(passed.status.success(), "{}", String::from_utf8_lossy(&passed.stderr));
    assert_eq!(String::from_utf8_lossy(&passed.stdout), "written\n");

    let failed = hubctl(&["submit", "--verify", "file_exists=never.txt", "--wait", "--", "true"]).await;
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("verification_failed: file_exists never.txt: never.txt does not exist"), "{stderr}");
    let id =
        stderr.split("task ").nth(1).and_then(|rest| rest.split_whitespace().next()).expect("the task id").to_owned();
    let shown = agentcom_integration::process::hubctl(&mesh.url, &mesh.api.token, &["get", &id]).await;
    let stdout = String::from_utf8_lossy(&shown.stdout);
    assert!(stdout.contains("verified:  failed (0 of 1 steps passed)"), "{stdout}");
    assert!(stdout.contains("  FAIL  file_exists never.txt"), "{stdout}");
    mesh.stop().await;
}
