//! A data directory written before storage had its own format opens, is migrated once, and
//! serves its tasks, with the real hub binary.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use agentcom_integration::{HubProcess, SidecarProcess, assert_eventually, shell};

const PATIENCE: Duration = Duration::from_secs(60);

/// `integration/fixtures/datadir-v1` copied to `dest` (the hub wants its token files private).
fn copy_fixture(dest: &Path) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/datadir-v1");
    std::fs::create_dir_all(dest).unwrap();
    for name in ["hub.redb", "admin.token", "join.token"] {
        std::fs::copy(fixture.join(name), dest.join(name)).unwrap();
    }
    for name in ["admin.token", "join.token"] {
        std::fs::set_permissions(dest.join(name), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_format_1_is_migrated_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("hub");
    copy_fixture(&data);
    let hub = HubProcess::serve(
        &data,
        &["--heartbeat-interval-ms", "100", "--lease-ttl-ms", "1000", "--allow-endpoint", "127.0.0.1:9"],
    )
    .await;

    // Every task is there, as it was.
    let (status, listed) = hub.api.request(reqwest::Method::GET, "/api/v1/tasks?limit=10", None).await;
    assert_eq!(status, 200, "{listed}");
    let tasks = listed["tasks"].as_array().unwrap();
    let named =
        |name: &str| tasks.iter().find(|t| t["spec"]["name"] == name).unwrap_or_else(|| panic!("{name}")).clone();
    assert_eq!(tasks.len(), 6, "{listed}");
    assert_eq!(named("ok")["state"], "succeeded");
    assert_eq!(named("fails")["state"], "dead_lettered");
    assert_eq!(named("fails")["state_reason"], "exit code 3 (attempt 1 of 1)");
    assert_eq!(named("llm")["state"], "queued");
    assert_eq!(named("waits")["state"], "cancelled");
    // A finished task's output is read from the migrated record.
    let ok = hub.api.get(named("ok")["id"].as_str().unwrap()).await;
    assert_eq!(ok["outcome"]["stdout"], "hello fixture\n", "{ok}");
    assert_eq!(ok["spec"]["idempotency_key"], "fx-1");

    // The fleet settings too: the cordon, and the endpoint the hub probes itself.
    let (_, hosts) = hub.api.request(reqwest::Method::GET, "/api/v1/hosts", None).await;
    let cordoned = &hosts["hosts"][0];
    assert_eq!((cordoned["online"].as_bool(), cordoned["cordon"].is_object()), (Some(false), true), "{hosts}");
    let (_, endpoints) = hub.api.request(reqwest::Method::GET, "/api/v1/endpoints", None).await;
    assert_eq!(endpoints["endpoints"][0]["url"], "http://127.0.0.1:9", "{endpoints}");

    // The task that was running when the hub stopped: its lease lapses (its sidecar is gone)
    // and a new sidecar runs it again; new work runs as usual.
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let _sidecar = SidecarProcess::start(&hub, "fresh", 2, &work);
    let long2 = named("long2")["id"].as_str().unwrap().to_owned();
    assert_eventually!(
        {
            let task = hub.api.get(&long2).await;
            task["state"] == "running" && task["lease_generation"] == 2 && task["sidecar_id"] == "fresh"
        },
        PATIENCE,
        "the interrupted task is retried on the new sidecar"
    );
    let submitted = hub.api.submit(shell("echo after")).await;
    let done = hub.api.wait_final(submitted["id"].as_str().unwrap(), PATIENCE).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (status, _) = hub.api.request(reqwest::Method::DELETE, &format!("/api/v1/tasks/{long2}"), None).await;
    assert_eq!(status, 200);
}
