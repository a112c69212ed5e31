//! The dashboard in a real browser (headless Chromium over the DevTools Protocol) against a
//! running mesh of real processes: `agentcom-hub dev` with two simulated GPUs and ten more
//! sidecars (one in front of an Ollama double), 1,004 agents in all. It loads with no console error, shows the agents and the GPU
//! host and a service with its ports and health (stopped from its button), streams a task's output live, drains a host from the UI (as `hubctl hosts` then says),
//! draws workflow runs live (a graph with a skipped branch, a loop's rounds, a fan-out's items),
//! cancels and retries runs from their buttons, and takes the screenshots in `docs/screenshots/` (written there when
//! `AGENTCOM_SCREENSHOTS=docs/screenshots`, else to a temporary directory).

use std::path::PathBuf;
use std::time::Duration;

use agentcom_integration::browser::Browser;
use agentcom_integration::ollama::{FakeModel, OllamaDouble};
use agentcom_integration::process::hubctl;
use agentcom_integration::{HubProcess, SidecarProcess, assert_eventually};
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(60);
const SIDECARS: usize = 10;
const SLOTS: u32 = 100;
const MODEL: &str = "llama3.2:3b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_fleet_live_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let hub = HubProcess::dev(&dir.path().join("hub"), &work, &["--simulate-gpus", "2"]).await;
    // One rack serves an Ollama (the double): a warm model, a cold one, LLM work for the LLM view.
    let ollama = OllamaDouble::start(vec![
        FakeModel::new(MODEL, 2_019_393_189, "llama", "3.2B"),
        FakeModel::new("qwen2.5:7b", 4_683_087_332, "qwen2", "7.6B"),
    ])
    .await;
    ollama.load(MODEL, 2_950_000_000);
    let mut sidecars = Vec::new();
    for n in 0..SIDECARS {
        let work = dir.path().join(format!("work-{n}"));
        std::fs::create_dir_all(&work).unwrap();
        let flags: Vec<&str> =
            if n == 0 { vec!["--ollama", &ollama.url, "--llm-check-interval-ms", "500"] } else { vec![] };
        sidecars.push(SidecarProcess::start_with(&hub, &format!("rack-{n:02}"), SLOTS, &work, &flags));
    }
    let agents = SIDECARS * SLOTS as usize + 4;
    assert_eventually!(hub.api.agents().await.len() == agents, PATIENCE, "{agents} agents joined");
    let hosts = hub.api.request(reqwest::Method::GET, "/api/v1/hosts", None).await.1;
    let gpu_host = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["resources"]["gpus_simulated"] == true)
        .map(|h| h["id"].as_str().unwrap().to_owned())
        .expect("the dev sidecar reports simulated GPUs");
    assert_eventually!(
        hub.api.request(reqwest::Method::GET, &format!("/api/v1/hosts/{gpu_host}"), None).await.1["host"]["history"]
            .as_array()
            .is_some_and(|h| h.len() >= 2),
        PATIENCE,
        "the GPU host has a little history for its sparklines"
    );
    // Some finished work for the task list, the queue and the LLM view.
    for n in 0..5 {
        let task = hub.api.submit(json!({ "name": format!("warm-up {n}"), "shell": { "argv": ["echo", "ok"] } })).await;
        hub.api.wait_final(task["id"].as_str().unwrap(), PATIENCE).await;
    }
    assert_eventually!(
        hub.api.request(reqwest::Method::GET, "/api/v1/endpoints", None).await.1["endpoints"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["healthy"] == true)),
        PATIENCE,
        "the rack's Ollama is up"
    );
    for n in 0..3 {
        let body = json!({ "name": format!("summary {n}"), "llm": { "prompt": "summarize the log", "model": MODEL } });
        let task = hub.api.submit(body).await;
        let done = hub.api.wait_final(task["id"].as_str().unwrap(), PATIENCE).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }

    // A service: its ports and health show on the fleet view.
    let body = json!({
        "name": "docs site",
        "service": {
            "script": "exec python3 -m http.server \"$PORT\" --bind 127.0.0.1",
            "ports": ["web"],
            "readiness": {"http": {"path": "/"}, "interval_ms": 100}
        }
    });
    let service = hub.api.submit(body).await["id"].as_str().unwrap().to_owned();
    assert_eventually!(
        hub.api.request(reqwest::Method::GET, &format!("/api/v1/tasks/{service}"), None).await.1["task"]["service"]["state"]
            == "ready",
        PATIENCE,
        "the service is ready"
    );
    let port = hub.api.request(reqwest::Method::GET, &format!("/api/v1/tasks/{service}"), None).await.1["task"]["service"]
        ["ports"]["web"]
        .as_u64()
        .unwrap();

    let shots = std::env::var_os("AGENTCOM_SCREENSHOTS").map(PathBuf::from);
    let scratch = tempfile::tempdir().unwrap();
    let shots = shots.unwrap_or_else(|| scratch.path().to_owned());
    let browser = Browser::launch(1280, 860).await.unwrap();
    browser.color_scheme("light").await.unwrap();

    // The first view, against 1,004 agents; the URL `agentcom-hub dev` prints logs in.
    browser.navigate(&format!("{}/#token={}", hub.url, hub.api.token)).await.unwrap();
    browser.wait_for("document.documentElement.dataset.ready === '1'", PATIENCE).await.unwrap();
    let timing = browser
        .eval(
            "(() => { const n = performance.getEntriesByType('navigation')[0]; \
             return { first_render_ms: window.__agentcomFirstRender, dom_content_loaded_ms: n.domContentLoadedEventEnd, \
             load_ms: n.loadEventEnd, transfer_bytes: performance.getEntriesByType('resource').reduce((a, r) => a + r.transferSize, 0), \
             requests: performance.getEntriesByType('resource').map(r => `${r.name.replace(location.origin, '')} ${Math.round(r.startTime)}-${Math.round(r.responseEnd)} ms`) }; })()",
        )
        .await
        .unwrap();
    let first_render = timing["first_render_ms"].as_f64().unwrap();
    let load = timing["load_ms"].as_f64().unwrap();
    eprintln!(
        "dashboard: first view rendered {first_render:.0} ms after navigation start, {:.0} ms after the load event, with {agents} agents ({timing})",
        first_render - load
    );
    let url = browser.eval("location.href").await.unwrap();
    assert!(!url.as_str().unwrap().contains(&hub.api.token), "the token left the URL: {url}");
    let stored = browser.eval("sessionStorage.getItem('agentcom.token')").await.unwrap();
    assert_eq!(stored, json!(hub.api.token), "the token is kept in session storage");

    // The agents and the simulated-GPU host show.
    browser
        .wait_for(&format!("document.querySelector('[data-host=\"{gpu_host}\"] [data-gpu=\"1\"]')"), PATIENCE)
        .await
        .unwrap();
    let counted = browser
        .eval("['idle','assigned','working','blocked','draining','offline'].map(s => Number(document.querySelector(`[data-agent-count=\"${s}\"]`)?.textContent || 0)).reduce((a, b) => a + b, 0)")
        .await
        .unwrap();
    assert_eq!(counted, json!(agents), "every agent is counted by state");
    let shown_hosts = browser.eval("document.querySelectorAll('[data-host]').length").await.unwrap();
    assert!(shown_hosts.as_u64().unwrap() >= (SIDECARS + 1) as u64, "{shown_hosts} hosts shown");
    let row = format!("document.querySelector('[data-service=\"{service}\"]')");
    browser
        .wait_for(
            &format!("{row}?.textContent.includes('ready') && {row}.textContent.includes('web {port}')"),
            PATIENCE,
        )
        .await
        .unwrap();
    // Its Stop button ends it, and it leaves the list.
    browser.eval(&format!("{row}.querySelector('button[data-action=\"cancel\"]').click()")).await.unwrap();
    browser.wait_for(&format!("!{row}"), PATIENCE).await.unwrap();
    assert_eq!(
        hub.api.request(reqwest::Method::GET, &format!("/api/v1/tasks/{service}"), None).await.1["task"]["state"],
        "cancelled"
    );
    let gpu_text =
        browser.eval(&format!("document.querySelector('[data-host=\"{gpu_host}\"]').innerText")).await.unwrap();
    assert!(gpu_text.as_str().unwrap().to_lowercase().contains("simulated"), "{gpu_text}");
    browser.wait_for("document.querySelector('#live')?.dataset.state === 'live'", PATIENCE).await.unwrap();
    browser
        .wait_for(&format!("document.querySelector('[data-model=\"{MODEL}\"][data-state=\"warm\"]')"), PATIENCE)
        .await
        .unwrap();
    browser.screenshot(&shots.join("fleet.png")).await.unwrap();
    browser.eval(&format!("document.querySelector('[data-host=\"{gpu_host}\"]').scrollIntoView()")).await.unwrap();
    browser.screenshot(&shots.join("fleet-gpu.png")).await.unwrap();
    browser.eval("window.scrollTo(0, 0)").await.unwrap();

    // A submitted task's output appears live, without a reload.
    browser.eval("window.__notReloaded = true").await.unwrap();
    let script = "echo first-line; sleep 2; echo second-line; echo oops >&2";
    let task = hub.api.submit(json!({ "name": "live output", "shell": { "script": script } })).await;
    let id = task["id"].as_str().unwrap().to_owned();
    browser.eval("location.hash = '#/tasks'").await.unwrap();
    browser.wait_for(&format!("document.querySelector('[data-task=\"{id}\"]')"), PATIENCE).await.unwrap();
    browser.screenshot(&shots.join("tasks.png")).await.unwrap();
    browser.eval(&format!("location.hash = '#/tasks/{id}'")).await.unwrap();
    let output = "document.querySelector('#task-output')?.textContent || ''";
    browser.wait_for(&format!("({output}).includes('first-line')"), PATIENCE).await.unwrap();
    let early = browser.eval(output).await.unwrap();
    assert!(!early.as_str().unwrap().contains("second-line"), "first-line came before the task ended: {early}");
    browser
        .wait_for(&format!("({output}).includes('second-line') && ({output}).includes('oops')"), PATIENCE)
        .await
        .unwrap();
    assert_eq!(browser.eval("window.__notReloaded").await.unwrap(), json!(true), "no reload");
    hub.api.wait_final(&id, PATIENCE).await;
    browser.wait_for("document.querySelector('#view-task')?.innerText.includes('succeeded')", PATIENCE).await.unwrap();
    browser.screenshot(&shots.join("task.png")).await.unwrap();

    // The queue and LLM views render.
    for view in ["queue", "llm"] {
        browser.eval(&format!("location.hash = '#/{view}'")).await.unwrap();
        browser
            .wait_for(&format!("getComputedStyle(document.querySelector('#view-{view}')).display !== 'none'"), PATIENCE)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        browser.screenshot(&shots.join(format!("{view}.png"))).await.unwrap();
    }
    // The queue's lanes are keyed once: above the chart, with their counts (the chart draws no
    // second legend of its own).
    browser.eval("location.hash = '#/queue'").await.unwrap();
    browser.wait_for("document.querySelectorAll('#queue-lanes .key').length > 0", PATIENCE).await.unwrap();
    let keys = browser
        .eval("[...document.querySelectorAll('#view-queue .key')].map((k) => k.textContent.split(' ')[0]).join(',')")
        .await
        .unwrap();
    assert_eq!(keys, json!("interactive,urgent,high,normal,low,blocked"), "each lane keyed once");

    workflows(&hub, &browser, &shots, dir.path()).await;

    // A drain from the UI shows on `hubctl hosts`.
    let target = "rack-03";
    browser.eval("location.hash = '#/fleet'").await.unwrap();
    let button = format!("document.querySelector('button[data-action=\"drain\"][data-host=\"{target}\"]')");
    browser.wait_for(&button, PATIENCE).await.unwrap();
    browser.eval(&format!("{button}.click()")).await.unwrap();
    browser
        .wait_for(
            &format!("document.querySelector('button[data-action=\"uncordon\"][data-host=\"{target}\"]')"),
            PATIENCE,
        )
        .await
        .unwrap();
    let listed = hubctl(&hub.url, &hub.api.token, &["hosts"]).await;
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let line = listed.lines().find(|l| l.contains(target)).unwrap_or_else(|| panic!("{target} in {listed}"));
    assert!(line.contains("cordoned"), "hubctl hosts: {line}");

    // Dark theme, and phone width.
    browser.color_scheme("dark").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    browser.screenshot(&shots.join("fleet-dark.png")).await.unwrap();
    browser.viewport(390, 844).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let overflow =
        browser.eval("document.documentElement.scrollWidth - document.documentElement.clientWidth").await.unwrap();
    assert!(overflow.as_i64().unwrap() <= 0, "the page scrolls sideways at phone width by {overflow} px");
    browser.screenshot(&shots.join("fleet-phone.png")).await.unwrap();

    let errors = browser.errors();
    assert!(errors.is_empty(), "console errors: {errors:#?}\nconsole: {:#?}", browser.console());
    drop(sidecars);
}

/// A workflow with a branch taken and one skipped, a fan-out, a loop over two steps and a join.
const GRAPH: &str = r#"
name: nightly-review
inputs:
  kind: {type: string, default: bug}
steps:
  - id: classify
    run: ["sh", "-c", "echo {{ inputs.kind }}"]
    outputs: {label: {regex: "^(\\w+)"}}
  - id: fix
    needs: [classify]
    if: steps.classify.outputs.label == "bug"
    run: "echo fixed"
  - id: docs
    needs: [classify]
    if: steps.classify.outputs.label == "docs"
    run: "echo documented"
  - id: per-file
    needs: [classify]
    for_each: ["a.rs", "b.rs", "c.rs", "d.rs", "e.rs", "f.rs"]
    max_parallel: 2
    run: ["sh", "-c", "echo reviewed {{ item }}"]
  - id: until-green
    needs: [fix]
    loop: {until: 'steps["until-green"].round >= 3', max: 5, from: fix}
    run: "echo round {{ round }}"
  - id: report
    needs: [per-file, until-green, docs]
    run: "echo done"
"#;

async fn start_run(hub: &HubProcess, workflow: &str) -> String {
    let body = json!({ "workflow": workflow, "inputs": {} });
    let (status, run) = hub.api.request(reqwest::Method::POST, "/api/v1/workflows/runs", Some(body)).await;
    assert_eq!(status, 201, "{run}");
    run["run"]["id"].as_str().unwrap().to_owned()
}

async fn run_of(hub: &HubProcess, id: &str) -> serde_json::Value {
    hub.api.request(reqwest::Method::GET, &format!("/api/v1/workflows/runs/{id}"), None).await.1["run"].take()
}

/// The Workflows view: the list follows runs live, a run's graph shows each step's state, its
/// loop's rounds and its fan-out's items and links to the step's task, and the run's buttons
/// cancel and retry it.
async fn workflows(hub: &HubProcess, browser: &Browser, shots: &std::path::Path, dir: &std::path::Path) {
    let graph = start_run(hub, GRAPH).await;
    assert_eventually!(run_of(hub, &graph).await["state"] == "succeeded", PATIENCE, "the graph run succeeded");
    let slow = start_run(hub, "name: slow\nsteps:\n  - id: wait\n    run: \"sleep 120\"\n").await;
    let once = dir.join("flaky-once");
    let flaky = format!(
        "name: flaky\nsteps:\n  - id: prepare\n    run: \"true\"\n  - id: flaky\n    needs: [prepare]\n    \
         run: \"if [ -f {0} ]; then exit 0; else touch {0}; exit 1; fi\"\n",
        once.display()
    );
    let flaky = start_run(hub, &flaky).await;
    assert_eventually!(run_of(hub, &flaky).await["state"] == "failed", PATIENCE, "the flaky run failed once");

    browser.eval("location.hash = '#/workflows'").await.unwrap();
    let row = |id: &str, state: &str| format!("document.querySelector('[data-run=\"{id}\"][data-state=\"{state}\"]')");
    browser.wait_for(&row(&graph, "succeeded"), PATIENCE).await.unwrap();
    browser.wait_for(&row(&slow, "running"), PATIENCE).await.unwrap();
    browser.wait_for(&row(&flaky, "failed"), PATIENCE).await.unwrap();
    // A run started while the list is open shows up and ends there, without a reload.
    let live = start_run(hub, "name: quick\nsteps:\n  - id: one\n    run: \"true\"\n").await;
    browser.wait_for(&row(&live, "succeeded"), PATIENCE).await.unwrap();
    let text = browser.eval(&format!("{}.innerText", row(&graph, "succeeded"))).await.unwrap();
    assert!(text.as_str().unwrap().contains("nightly-review"), "{text}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    browser.screenshot(&shots.join("workflows.png")).await.unwrap();

    // The graph of the run: states, the skipped branch, the loop's rounds, the fan-out's items.
    browser.eval(&format!("location.hash = '#/workflows/{graph}'")).await.unwrap();
    let node = |step: &str| format!("document.querySelector('svg.wfgraph a[data-step=\"{step}\"]')");
    browser.wait_for(&format!("{}?.dataset.state === 'succeeded'", node("report")), PATIENCE).await.unwrap();
    let states = browser
        .eval("[...document.querySelectorAll('svg.wfgraph a[data-step]')].map(a => a.dataset.step + '=' + a.dataset.state).join(',')")
        .await
        .unwrap();
    assert_eq!(
        states,
        json!(
            "classify=succeeded,fix=succeeded,docs=skipped,per-file=succeeded,until-green=succeeded,report=succeeded"
        ),
        "every step drawn with its state"
    );
    let edges = browser.eval("document.querySelectorAll('svg.wfgraph path[data-edge]').length").await.unwrap();
    assert_eq!(edges, json!(7), "an edge per need");
    let back = browser
        .eval("[...document.querySelectorAll('svg.wfgraph path[data-loop]')].map(p => p.dataset.loop)")
        .await
        .unwrap();
    assert_eq!(back, json!(["until-green>fix"]), "the loop over fix and until-green is drawn back to fix");
    let fix = browser.eval(&format!("{}.textContent", node("fix"))).await.unwrap();
    assert!(fix.as_str().unwrap().contains("round 3"), "fix ran in each of the loop's rounds: {fix}");
    let fan = browser.eval(&format!("{}.textContent", node("per-file"))).await.unwrap();
    assert!(fan.as_str().unwrap().contains("6/6 items"), "the fan-out's items: {fan}");
    let looped = browser.eval(&format!("{}.textContent", node("until-green"))).await.unwrap();
    assert!(looped.as_str().unwrap().contains("round 3 of 5"), "the loop's rounds: {looped}");
    let rows = browser.eval("document.querySelectorAll('#wf-rows tr[data-row^=\"per-file:\"]').length").await.unwrap();
    assert_eq!(rows, json!(6), "a row per item");
    let api_run = run_of(hub, &graph).await;
    let fix_task = api_run["steps"].as_array().unwrap().iter().find(|s| s["id"] == "fix").unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let href = browser.eval(&format!("{}.getAttribute('href')", node("fix"))).await.unwrap();
    assert_eq!(href, json!(format!("#/tasks/{fix_task}")), "a step links to its task");
    let tokens = browser.eval("document.querySelector('#wf-head').innerText").await.unwrap();
    assert!(tokens.as_str().unwrap().contains("Tokens"), "{tokens}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    browser.screenshot(&shots.join("workflow-run.png")).await.unwrap();
    browser.eval(&format!("{}.dispatchEvent(new MouseEvent('click', {{bubbles: true}}))", node("fix"))).await.unwrap();
    browser
        .wait_for(&format!("location.hash === '#/tasks/{fix_task}' && document.querySelector('#view-task')?.innerText.includes('succeeded')"), PATIENCE)
        .await
        .unwrap();

    // Cancel from the run's button.
    browser.eval(&format!("location.hash = '#/workflows/{slow}'")).await.unwrap();
    // The button of this run: the page of the last one may still be up for a frame.
    let button = |action: &str, run: &str| {
        format!("document.querySelector('button[data-action=\"{action}\"][data-id=\"{run}\"]')")
    };
    browser.wait_for(&button("run-cancel", &slow), PATIENCE).await.unwrap();
    browser.eval(&format!("{}.click()", button("run-cancel", &slow))).await.unwrap();
    assert_eventually!(run_of(hub, &slow).await["state"] == "cancelled", PATIENCE, "the run is cancelled");
    browser.wait_for(&format!("{}?.dataset.state === 'cancelled'", node("wait")), PATIENCE).await.unwrap();

    // Retry from the run's button: the failed step goes again and the graph follows it live.
    browser.eval(&format!("location.hash = '#/workflows/{flaky}'")).await.unwrap();
    browser.wait_for(&button("run-retry", &flaky), PATIENCE).await.unwrap();
    browser.wait_for(&format!("{}?.dataset.state === 'failed'", node("flaky")), PATIENCE).await.unwrap();
    browser.eval(&format!("{}.click()", button("run-retry", &flaky))).await.unwrap();
    browser.wait_for(&format!("{}?.dataset.state === 'succeeded'", node("flaky")), PATIENCE).await.unwrap();
    let run = run_of(hub, &flaky).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["retries"], 1, "{run}");
}
