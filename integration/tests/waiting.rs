//! Nobody waits in silence, and work goes only where it will run: `hubctl submit --wait` says
//! why a task waits within 2 seconds (no sidecar; no LLM endpoint), and LLM work and work in a
//! repository go past a sidecar that would refuse them to one that runs them. Real processes on
//! loopback: the hub, sidecars, hubctl, and an OpenAI-compatible double.

#![allow(clippy::disallowed_methods)] // Tests start the real binaries.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agentcom_integration::chat_doubles::ChatDouble;
use agentcom_integration::process::{SidecarProcess, binary, free_port, git};
use agentcom_integration::{HubProcess, shell};
use serde_json::json;

/// `hubctl submit --wait ARGS`, its stderr lines as they come.
struct Waiting {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    started: Instant,
}

impl Waiting {
    fn start(hub: &HubProcess, args: &[&str]) -> Waiting {
        let mut child = Command::new(binary("hubctl"))
            .args(["submit", "--wait"])
            .args(args)
            .env("AGENTCOM_HUB", &hub.url)
            .env("AGENTCOM_TOKEN", &hub.api.token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Waiting { child, lines, started: Instant::now() }
    }

    /// The first stderr line that contains `text`, and when it came (since the start).
    fn said(&self, text: &str, within: Duration) -> (String, Duration) {
        loop {
            let left = within.saturating_sub(self.started.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return (line, self.started.elapsed()),
                Ok(_) => {}
                Err(_) => panic!("hubctl did not say {text:?} within {within:?}"),
            }
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_task_says_why_within_two_seconds_and_runs_once_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &[]).await;

    // No sidecar at all.
    let waiting = Waiting::start(&hub, &["--", "echo", "hello"]);
    let (line, at) = waiting.said("hubctl: waiting: no sidecar is connected", Duration::from_secs(10));
    assert!(at < Duration::from_millis(2_500), "said after {at:?}: {line}");
    assert!(line.contains("agentcom-sidecar run") && line.contains("(no_sidecar)"), "{line}");
    // One joins: the task runs, and --wait ends with its exit code.
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let _sidecar = SidecarProcess::start(&hub, "plain", 1, &work);
    let mut waiting = waiting;
    let status = tokio::task::spawn_blocking(move || waiting.child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status}");

    // A sidecar, but no LLM endpoint anywhere.
    let waiting = Waiting::start(&hub, &["--prompt", "Say hi"]);
    let (line, at) = waiting.said("hubctl: waiting:", Duration::from_secs(10));
    assert!(at < Duration::from_millis(2_500), "said after {at:?}: {line}");
    assert!(line.contains("no connected sidecar has a working LLM endpoint"), "{line}");
    for fix in ["Ollama", "--ollama URL", "--openai-base-url URL", "ANTHROPIC_API_KEY", "(no_llm_endpoint)"] {
        assert!(line.contains(fix), "{fix} missing from: {line}");
    }
    let why = hub.api.request(reqwest::Method::GET, "/api/v1/tasks?limit=1", None).await.1;
    let id = why["tasks"][0]["id"].as_str().unwrap().to_owned();
    let why = hub.api.request(reqwest::Method::GET, &format!("/api/v1/tasks/{id}/why"), None).await.1;
    assert_eq!((why["why"]["code"].as_str(), why["why"]["stuck"].as_bool()), (Some("no_llm_endpoint"), Some(true)));
    assert_eq!(hub.api.get(&id).await["state"], "queued", "waiting, not failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_goes_past_a_sidecar_that_would_refuse_it_to_one_that_runs_it() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &[]).await;
    let double = ChatDouble::openai().await;
    let dead = format!("http://127.0.0.1:{}/v1", free_port());
    // Two repositories: the first sidecar allows only the first, the second only the second.
    let repos = dir.path().join("repos");
    for name in ["a", "b"] {
        let repo = repos.join(name).join("app");
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q"]);
        std::fs::write(repo.join("README"), name).unwrap();
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-q", "-m", "first"]);
    }
    let (allow_a, allow_b) = (repos.join("a").display().to_string(), repos.join("b").display().to_string());
    let (work_a, work_b) = (dir.path().join("work-a"), dir.path().join("work-b"));
    std::fs::create_dir_all(&work_a).unwrap();
    std::fs::create_dir_all(&work_b).unwrap();
    // "down" has more agents (placement's first pick) but its only endpoint does not answer.
    let _down =
        SidecarProcess::start_with(&hub, "down", 4, &work_a, &["--openai-base-url", &dead, "--repo-allow", &allow_a]);
    let _up = SidecarProcess::start_with(
        &hub,
        "up",
        1,
        &work_b,
        &["--openai-base-url", &double.url, "--repo-allow", &allow_b],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let endpoints = hub.api.request(reqwest::Method::GET, "/api/v1/endpoints", None).await.1;
        let list = endpoints["endpoints"].as_array().cloned().unwrap_or_default();
        if list.len() == 2 && hub.api.agents().await.len() == 5 {
            let healthy: Vec<bool> = list.iter().map(|e| e["healthy"] == true).collect();
            assert!(healthy.contains(&true) && healthy.contains(&false), "{list:?}");
            break;
        }
        assert!(Instant::now() < deadline, "both sidecars and their endpoints did not show up: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for n in 0..3 {
        let task = hub.api.submit(json!({"llm": {"prompt": format!("hello {n}")}})).await;
        let done = hub.api.wait_final(task["id"].as_str().unwrap(), Duration::from_secs(30)).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_eq!(done["sidecar_id"], "up", "LLM work went to the sidecar whose endpoint works");
    }
    let mut in_repo = shell("cat README");
    in_repo["context"] = json!({"repository": repos.join("b/app").display().to_string()});
    let task = hub.api.submit(in_repo).await;
    let done = hub.api.wait_final(task["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!((done["state"].as_str(), done["sidecar_id"].as_str()), (Some("succeeded"), Some("up")), "{done}");
    assert_eq!(done["outcome"]["stdout"], "b");

    // A repository no sidecar allows waits, saying so; it is not failed.
    let mut nowhere = shell("true");
    nowhere["context"] = json!({"repository": dir.path().join("elsewhere/app").display().to_string()});
    let id = hub.api.submit(nowhere).await["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let why = hub.api.request(reqwest::Method::GET, &format!("/api/v1/tasks/{id}/why"), None).await.1;
    assert_eq!(why["why"]["code"], "repository_not_allowed", "{why}");
    assert!(why["why"]["message"].as_str().unwrap().contains("--repo-allow"));
    assert_eq!(hub.api.get(&id).await["state"], "queued");
}
