//! `hubctl repo up` end to end, through the real binaries: fixture repositories (git
//! repositories the test makes, no network) brought up by the hub's built-in `repo-up` workflow
//! on a sidecar that allows them; their services ready on ports of their own and answering;
//! two runs of one repository at once on different ports; a second run that skips the setup it
//! finds recorded, and `--fresh` that repeats it; a broken start command fixed by an agent
//! (against a scripted tool-calling double), with the diff and commit in the report; and
//! `hubctl repo down`, after which no process runs in the repository's environment (checked in
//! the process table).
#![allow(clippy::disallowed_methods)] // Reason: tests start the real binaries.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentcom_integration::ollama::{FakeModel, OllamaDouble, Turn};
use agentcom_integration::process::{HubProcess, SidecarProcess, hubctl};
use agentcom_integration::repos;
use serde_json::{Value, json};

/// `hubctl --json ARGS`: its exit code and JSON.
async fn hubctl_json(hub: &HubProcess, args: &[&str]) -> (i32, Value) {
    let args_json = [&["--json"], args].concat();
    let run = hubctl(&hub.url, &hub.api.token, &args_json);
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .unwrap_or_else(|_| panic!("hubctl {args:?} did not end in 300 s"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = serde_json::from_str(&stdout)
        .unwrap_or_else(|err| panic!("hubctl {args:?}: {err}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr)));
    (output.status.code().unwrap_or(-1), value)
}

fn phase<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["phases"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{report:#}"))
}

/// Every service of the report is ready and answers `path` on its URL's port.
async fn answers(report: &Value, routes: &[(&str, &str)]) {
    for (name, path) in routes {
        let service = report["services"].as_array().unwrap().iter().find(|s| s["name"] == *name);
        let service = service.unwrap_or_else(|| panic!("no service {name}: {report:#}"));
        assert_eq!(service["state"], "ready", "{report:#}");
        let port = service["port"].as_u64().unwrap_or_else(|| panic!("{service}"));
        assert!(service["url"].as_str().unwrap().ends_with(&format!(":{port}")), "{service}");
        let answer = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await.unwrap();
        assert_eq!(answer.status(), 200, "{name} {path}");
    }
}

/// The processes whose working directory is inside `dir`.
fn processes_in(dir: &Path) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) else { continue };
        if cwd.starts_with(dir) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
}

struct Fleet {
    hub: HubProcess,
    _sidecar: SidecarProcess,
    repos: PathBuf,
    work: PathBuf,
    double: OllamaDouble,
    _dir: tempfile::TempDir,
}

/// A hub and a sidecar named after `id` and this process (a sidecar's id is claimed
/// machine-wide: one per test, and none another test run may hold).
async fn fleet(id: &str) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let (repos, work) = (dir.path().join("repos"), dir.path().join("work"));
    std::fs::create_dir_all(&repos).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let model = "qwen2.5-coder:7b";
    let double = OllamaDouble::start(vec![FakeModel::new(model, 1, "qwen2", "7.6B")]).await;
    double.load(model, 1);
    let hub = HubProcess::serve(&dir.path().join("hub"), &[]).await;
    let allow = repos.to_string_lossy().into_owned();
    let sidecar = SidecarProcess::start_with(
        &hub,
        &format!("{id}-{}", std::process::id()),
        12,
        &work,
        &["--repo-allow", &allow, "--ollama", &double.url, "--llm-check-interval-ms", "200"],
    );
    // The fix step needs the model at the hub.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, list) = hub.api.request(reqwest::Method::GET, "/api/v1/endpoints", None).await;
        if list["endpoints"][0]["healthy"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "the sidecar's endpoint never became healthy: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Fleet { hub, _sidecar: sidecar, repos, work, double, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repo_up_brings_fixtures_up_resumes_fixes_a_broken_start_and_down_ends_every_process() {
    let fleet = fleet("repos").await;
    let hub = &fleet.hub;

    // The workflow is the hub's, readable.
    let shown = hubctl(&hub.url, &hub.api.token, &["workflow", "show", "repo-up"]).await;
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success() && text.starts_with("# repo-up") && text.contains("id: fix"), "{text}");

    // The standard-library app, twice at once: each run's service on a port of its own.
    let stdlib = repos::commit(&fleet.repos, "stdlib", repos::STDLIB_WEB);
    let stdlib = stdlib.to_string_lossy().into_owned();
    let up = ["repo", "up", stdlib.as_str(), "--wait"];
    let (first, second) = tokio::join!(hubctl_json(hub, &up), hubctl_json(hub, &up));
    for (code, report) in [&first, &second] {
        assert_eq!((*code, report["run"]["state"].as_str()), (0, Some("succeeded")), "{report:#}");
        answers(&report["run"], &[("web", "/health")]).await;
    }
    let port = |report: &Value| report["run"]["services"][0]["port"].as_u64().unwrap();
    assert_ne!(port(&first.1), port(&second.1), "two runs of one repository, two ports");
    assert_eq!(first.1["run"]["environment"], second.1["run"]["environment"], "one environment per commit");

    // Two services from a Procfile: the worker first, the web told its address.
    let two = repos::commit(&fleet.repos, "two", repos::TWO_SERVICES);
    let (code, two_report) = hubctl_json(hub, &["repo", "up", &two.to_string_lossy(), "--wait"]).await;
    assert_eq!((code, two_report["run"]["state"].as_str()), (0, Some("succeeded")), "{two_report:#}");
    answers(&two_report["run"], &[("worker", "/"), ("web", "/healthz")]).await;
    assert_eq!(phase(&two_report["run"], "setup")["state"], "succeeded", "a virtualenv was made");

    // The Makefile one: set up once; a second run finds the record and skips its setup.
    let make = repos::commit(&fleet.repos, "make", repos::MAKEFILE);
    let make = make.to_string_lossy().into_owned();
    let (code, made) = hubctl_json(hub, &["repo", "up", &make, "--wait"]).await;
    assert_eq!((code, made["run"]["state"].as_str()), (0, Some("succeeded")), "{made:#}");
    answers(&made["run"], &[("web", "/ready")]).await;
    let setup = phase(&made["run"], "setup");
    assert_eq!(setup["state"], "succeeded", "{made:#}");
    let marker = Path::new(made["run"]["environment"].as_str().unwrap()).join("build-out/marker");
    assert!(marker.exists(), "make install ran in the environment");
    let (code, again) = hubctl_json(hub, &["repo", "up", &make, "--wait"]).await;
    assert_eq!(code, 0, "{again:#}");
    let setup = phase(&again["run"], "setup");
    assert_eq!(setup["state"], "skipped", "{again:#}");
    assert_eq!(setup["resumed"]["commands"], json!(["make install"]), "the phase record: {setup}");
    let (code, fresh) = hubctl_json(hub, &["repo", "up", &make, "--wait", "--fresh"]).await;
    assert_eq!(code, 0, "{fresh:#}");
    assert_eq!(phase(&fresh["run"], "setup")["state"], "succeeded", "--fresh sets up again: {fresh:#}");

    // The broken one: never ready on its port; an agent fixes the Procfile; then it is.
    let call = |name: &str, arguments: Value| (name.to_owned(), arguments);
    fleet.double.turns(vec![
        Turn::ToolCalls(vec![call("read_file", json!({ "path": "Procfile" }))]),
        Turn::ToolCalls(vec![call(
            "edit_file",
            json!({ "path": "Procfile", "old_string": "--port 8099", "new_string": "--port $PORT" }),
        )]),
        Turn::Text("The Procfile passed a port nothing sets; it passes $PORT now.".into()),
    ]);
    let broken = repos::commit(&fleet.repos, "broken", repos::BROKEN);
    let args = ["repo", "up", &broken.to_string_lossy(), "--wait", "--ready-within", "2s"];
    let (code, fixed) = hubctl_json(hub, &args).await;
    let run = &fixed["run"];
    assert_eq!((code, run["state"].as_str()), (0, Some("succeeded")), "{fixed:#}");
    answers(run, &[("web", "/health")]).await;
    let fix = &run["fixes"][0];
    assert_eq!((fix["state"].as_str(), fix["verdict"].as_str()), (Some("succeeded"), Some("passed")), "{fixed:#}");
    assert!(fix["diff"].as_str().unwrap().contains("+web: python3 server.py --port $PORT"), "{fix}");
    assert_eq!(fix["branch"], format!("agentcom/{}", run["id"].as_str().unwrap()));
    let commit = fix["commit"].as_str().unwrap();
    assert_eq!(run["commit"], commit, "the services run the fix");
    let goal = fleet.double.chats()[0]["messages"][1]["content"].as_str().unwrap().to_owned();
    assert!(goal.contains("never became ready") && goal.contains("/health"), "the evidence went to the agent: {goal}");
    assert_eq!(phase(run, "detect")["round"], 2, "the plan was read again with the fix");

    // Down: every process of every service of a run ends.
    let env = PathBuf::from(two_report["run"]["environment"].as_str().unwrap());
    assert!(processes_in(&env).len() >= 2, "the two services run: {:?}", processes_in(&env));
    let run_id = two_report["run"]["id"].as_str().unwrap();
    let down = hubctl(&hub.url, &hub.api.token, &["repo", "down", run_id]).await;
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert!(String::from_utf8_lossy(&down.stdout).contains("stopped 2 service(s)"));
    assert_eq!(processes_in(&env), Vec::new(), "nothing of the run is left");
    let listed = hubctl_json(hub, &["services"]).await.1;
    assert!(listed["services"].as_array().unwrap().iter().all(|s| s["run_id"] != run_id), "{listed:#}");
    for run in [&first.1, &second.1, &made, &again, &fresh, &fixed] {
        let id = run["run"]["id"].as_str().unwrap();
        assert!(hubctl(&hub.url, &hub.api.token, &["repo", "down", id]).await.status.success());
    }
    assert_eq!(processes_in(&fleet.work), Vec::new(), "every service of every run ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_the_rules_find_no_service_a_models_plan_brings_the_repository_up_marked_as_the_models() {
    let fleet = fleet("notes").await;
    let plan = json!({
        "install": [],
        "services": [{"name": "web", "run": "sh serve.sh", "ports": ["web"], "health": {"kind": "http", "port": "web", "path": "/"}}]
    });
    fleet.double.turns(vec![Turn::Text(plan.to_string())]);
    let notes = repos::commit(&fleet.repos, "notes", repos::NO_RULES);
    let (code, report) = hubctl_json(&fleet.hub, &["repo", "up", &notes.to_string_lossy(), "--wait"]).await;
    let run = &report["run"];
    assert_eq!((code, run["state"].as_str()), (0, Some("succeeded")), "{report:#}");
    assert_eq!(run["detected"]["needs_model"], true);
    assert_eq!(run["proposed"]["services"][0]["source"], "model", "{report:#}");
    answers(run, &[("web", "/")]).await;
    let asked = fleet.double.chats()[0]["messages"].to_string();
    assert!(asked.contains("serve.sh") && asked.contains("sh serve.sh"), "the model saw the files: {asked}");
    let id = run["id"].as_str().unwrap();
    assert!(hubctl(&fleet.hub.url, &fleet.hub.api.token, &["repo", "down", id]).await.status.success());
}
