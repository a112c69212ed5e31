//! Service tasks end to end, through the real binaries: a Python web service on the ports its
//! sidecar reserved, ready by its HTTP probe and listed by `hubctl services`; two services that
//! never share a port; one that dies and is restarted by its policy; one that never becomes
//! ready and fails with the probe's last evidence; and `hubctl stop`, after which no process of
//! the service is left (checked in the process table).
#![allow(clippy::disallowed_methods)] // Reason: tests start the real binaries.

use std::path::Path;
use std::time::{Duration, Instant};

use agentcom_integration::process::{HubProcess, SidecarProcess, hubctl};
use serde_json::{Value, json};

/// A web service on the standard library: `/healthz` answers 200 on `$PORT`; it writes the
/// pids of two children it leaves running (one in a session of its own) to `pids`.
const SERVER: &str = r#"
import http.server, os, subprocess, sys
kids = [subprocess.Popen(["sleep", "300"]), subprocess.Popen(["setsid", "sleep", "300"])]
with open(sys.argv[1], "a") as f:
    f.write(" ".join(str(p) for p in [os.getpid()] + [k.pid for k in kids]) + "\n")
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

async fn submit(hub: &HubProcess, body: Value) -> String {
    let (status, response) = hub.api.request(reqwest::Method::POST, "/api/v1/tasks", Some(body)).await;
    assert_eq!(status, 201, "{response}");
    response["task"]["id"].as_str().unwrap().to_owned()
}

async fn task(hub: &HubProcess, id: &str) -> Value {
    hub.api.request(reqwest::Method::GET, &format!("/api/v1/tasks/{id}"), None).await.1["task"].clone()
}

/// Polls the task until `done` holds of it.
async fn until(hub: &HubProcess, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let task = task(hub, id).await;
        if done(&task) {
            return task;
        }
        assert!(Instant::now() < deadline, "{id} never {what}: {task:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for this purpose: it runs nothing and holds no port.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

fn web_service(dir: &Path, name: &str, script: &str) -> Value {
    json!({
        "name": name,
        "service": {
            "script": script,
            "cwd": dir.to_string_lossy(),
            "ports": ["web", "admin"],
            "readiness": {"http": {"port": "web", "path": "/healthz"}, "interval_ms": 100, "start_period_ms": 20000},
            "liveness": {"tcp": "web", "interval_ms": 200},
            "restart": {"policy": "on-failure", "limit": 2, "backoff_base_ms": 200}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_ports_probes_restarts_and_stop_with_every_process() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("server.py"), SERVER).unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &[]).await;
    let _sidecar = SidecarProcess::start(&hub, "svc", 4, &work);

    // Two services of one command: each ready on ports of its own.
    let script = "exec python3 server.py pids";
    let first = submit(&hub, web_service(&work, "web-1", script)).await;
    let second = submit(&hub, web_service(&work, "web-2", script)).await;
    let ready = |t: &Value| t["service"]["state"] == "ready";
    let (one, two) =
        (until(&hub, &first, "became ready", ready).await, until(&hub, &second, "became ready", ready).await);
    let ports = |t: &Value| -> Vec<u64> {
        ["web", "admin"].iter().map(|p| t["service"]["ports"][p].as_u64().unwrap()).collect()
    };
    let mut all = [ports(&one), ports(&two)].concat();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 4, "four ports, none shared: {one:#} {two:#}");
    let web = ports(&one)[0];
    let answer = reqwest::get(format!("http://127.0.0.1:{web}/healthz")).await.unwrap();
    assert_eq!(answer.status(), 200, "PORT is the web port");
    assert_eq!(one["state"], "running");

    // hubctl services lists both, with host, ports and state.
    let listed = hubctl(&hub.url, &hub.api.token, &["--json", "services"]).await;
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let entry = listed["services"].as_array().unwrap().iter().find(|s| s["id"] == first.as_str()).cloned().unwrap();
    assert_eq!((entry["name"].as_str(), entry["state"].as_str()), (Some("web-1"), Some("ready")), "{entry:#}");
    assert_eq!(entry["ports"]["web"], web);
    assert!(entry["url"].as_str().unwrap().ends_with(&format!(":{web}")), "{entry:#}");
    assert!(entry["host"].is_string(), "{entry:#}");
    let table = hubctl(&hub.url, &hub.api.token, &["services"]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("web-1") && table.contains(&format!("web={web}")), "{table}");

    // Stopping one ends it and every process it started, setsid children included.
    let stopped = hubctl(&hub.url, &hub.api.token, &["stop", &first]).await;
    assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
    let pids: Vec<Vec<i32>> = std::fs::read_to_string(work.join("pids"))
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().map(|p| p.parse().unwrap()).collect())
        .collect();
    assert_eq!(pids.len(), 2, "two services started once each: {pids:?}");
    let stopped_task = task(&hub, &first).await;
    assert_eq!(stopped_task["state"], "cancelled", "{stopped_task:#}");
    // Which line is the first service's: the one whose server no longer runs.
    let (gone, running): (Vec<_>, Vec<_>) = pids.iter().partition(|line| !alive(line[0]));
    assert_eq!(gone.len(), 1, "one service stopped: {pids:?}");
    for pid in gone[0] {
        assert!(!alive(*pid), "{pid} of the stopped service still runs");
    }
    assert!(running[0].iter().all(|pid| alive(*pid)), "the other service runs on: {pids:?}");
    let answer = reqwest::get(format!("http://127.0.0.1:{}/healthz", ports(&two)[0])).await.unwrap();
    assert_eq!(answer.status(), 200);
    let stopped = hubctl(&hub.url, &hub.api.token, &["stop", &second]).await;
    assert!(stopped.status.success());
    assert!(running[0].iter().all(|pid| !alive(*pid)), "stopped: {pids:?}");
    let listed = hubctl(&hub.url, &hub.api.token, &["--json", "services"]).await;
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["services"], json!([]), "nothing runs");

    // One that dies after it was ready is restarted by its policy, on the same ports.
    let flaky = "if [ ! -e died ]; then touch died; python3 server.py flaky-pids & sleep 1; echo 'boom' >&2; exit 3; fi; exec python3 server.py flaky-pids";
    let id = submit(&hub, web_service(&work, "flaky", flaky)).await;
    let restarted = until(&hub, &id, "restarted and became ready", |t| {
        t["service"]["restarts"] == 1 && t["service"]["state"] == "ready"
    })
    .await;
    assert!(restarted["service"]["evidence"].as_str().is_some(), "{restarted:#}");
    let stopped = hubctl(&hub.url, &hub.api.token, &["stop", &id]).await;
    assert!(stopped.status.success());
    let finished = task(&hub, &id).await;
    let stderr = finished["outcome"]["stderr"].as_str().unwrap_or_default();
    assert!(stderr.contains("boom") && stderr.contains("restart 1"), "the restart is in its output: {stderr}");

    // One that never answers on its port fails with what the probe saw last.
    let deaf = json!({
        "name": "deaf",
        "service": {
            "script": "sleep 300",
            "ports": ["web"],
            "readiness": {"http": {"path": "/healthz"}, "interval_ms": 100, "start_period_ms": 300, "failure_threshold": 3}
        }
    });
    let id = submit(&hub, deaf).await;
    let failed = until(&hub, &id, "failed", |t| t["state"] == "failed").await;
    let reason = failed["state_reason"].as_str().unwrap();
    assert!(reason.contains("never became ready") && reason.contains("/healthz"), "{reason}");
    assert!(reason.contains("connection refused"), "{reason}");

    // Bad service work is refused with the field at fault.
    let (status, refused) = hub
        .api
        .request(
            reqwest::Method::POST,
            "/api/v1/tasks",
            Some(json!({"service": {"script": "true", "readiness": {"tcp": "db"}, "ports": ["web"]}})),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused.to_string().contains("work.service.readiness"), "{refused}");
}
