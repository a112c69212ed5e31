//! The dashboard in a real browser (headless Chromium over the DevTools Protocol) against a
//! running mesh of real processes: `agentcom-hub dev` with two simulated GPUs and ten more
//! sidecars (one in front of an Ollama double), 1,004 agents in all. It loads with no console error, shows the agents and the GPU
//! host, streams a task's output live, drains a host from the UI (as `hubctl hosts` then says),
//! and takes the screenshots in `docs/screenshots/` (written there when
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
    assert_eq!(keys, json!("urgent,high,normal,low,blocked"), "each lane keyed once");

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
