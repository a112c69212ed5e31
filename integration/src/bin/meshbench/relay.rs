//! `meshbench relay`: LLM tokens relayed from an Ollama protocol double through a sidecar
//! process and a hub process to a watching client, at 1 and 100 concurrent streams, beside the
//! floor measured in the same run: the same chats sent to the double directly.
//!
//! Each mesh stream submits an LLM task over gRPC (`SubmitTask`, durable), follows it with
//! `WatchTask`, and counts the reply's bytes (every token is `tok `, four bytes) until the task
//! ends. Two phases per concurrency:
//! - throughput: the double sends its tokens as fast as it can; tokens per second is every token
//!   received by the watchers over the wall time of the phase;
//! - time to first token, with the double pacing its tokens as a model does (`--pace-ms`), so the
//!   figure is the mesh's path and not a saturated machine's queue, with the streams' starts
//!   spread over a reply's time (as independent streams arrive) and, separately, all together
//!   (a burst of submits each round, the worst moment): from sending the submit to
//!   the first output at the watcher, against the direct chat's time from sending the request to
//!   its first chunk. The difference is what the mesh adds: the durable submit (one commit with
//!   the dispatch when an agent is free), placement, the assignment, the chat request, and the
//!   token's way back through sidecar and hub to a watcher that subscribed after the submit's
//!   answer. The raw fdatasync of the same disk is printed beside it, and the hub's cheapest
//!   gRPC answer (`GetTask` of nothing) back to back and after a pause as long as a token's
//!   gap: what one request costs a process that has been idle, which each hop of the mesh pays.
//!
//! `--link` picks the sidecar's link: `plain` (h2c, the default), `tls` (the hub's default:
//! TLS on TCP, the sidecar enrolled with a join token) or `quic`; `--impair` puts it behind the
//! test relays (`agentcom_integration::relay`): 50 ms each way, and on UDP 1 % loss and no
//! datagram over 1,232 bytes. Submits and watchers reach the hub directly, over TLS when it
//! serves TLS, so the difference is the link's.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentcom_integration::ollama::{ChatScript, FakeModel, OllamaDouble};
use agentcom_integration::relay::{Impairment, TcpRelay, UdpRelay};
use agentcom_proto::v1 as pb;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;

use crate::latency_summary;

const MODEL: &str = "relay:1b";
pub(crate) const TOKEN: &str = "tok ";

/// The sidecar's link to the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Link {
    Plain,
    Tls,
    Quic,
}

pub(crate) struct Options {
    /// How the sidecar reaches the hub, and whether through the impairing relay (and how).
    pub(crate) link: Link,
    pub(crate) impair: Option<Impairment>,
    /// Concurrent streams per phase.
    pub(crate) streams: Vec<usize>,
    /// Tokens in each reply.
    pub(crate) tokens: usize,
    /// Replies per stream in each phase.
    pub(crate) rounds: usize,
    /// Between tokens in the latency phase.
    pub(crate) pace: Duration,
}

/// Tokens in each reply of the latency phase.
const PACED_TOKENS: usize = 20;

/// What one phase measured: tokens per second, each reply's time to first token, and (through
/// the mesh) each durable submit's round trip.
#[derive(Default)]
struct Phase {
    tokens_per_s: f64,
    ttft: Vec<Duration>,
    submit: Vec<Duration>,
    /// From sending the submit to the chat request reaching the double.
    to_double: Vec<Duration>,
}

impl Phase {
    fn json(self) -> Value {
        let mut figures = json!({ "tokens_per_s": self.tokens_per_s.round(), "ttft": latency_summary(self.ttft) });
        if !self.submit.is_empty() {
            figures["durable_submit"] = latency_summary(self.submit);
            figures["submit_to_the_chat_request"] = latency_summary(self.to_double);
        }
        figures
    }
}

/// `streams` clients each chatting with the double `rounds` times, directly.
async fn direct(
    url: &str,
    (streams, rounds, tokens): (usize, usize, usize),
    stagger: Duration,
) -> anyhow::Result<Phase> {
    let client = agentcom_llm::chat::client();
    let started = Instant::now();
    let runs = (0..streams).map(|i| {
        let (client, url) = (client.clone(), url.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(stagger * i as u32).await;
            let mut ttfts = Vec::new();
            let mut received = 0;
            for _ in 0..rounds {
                let body = json!({ "model": MODEL, "messages": [{ "role": "user", "content": "go" }], "stream": true });
                let sent = Instant::now();
                let response = client.post(format!("{url}/api/chat")).json(&body).send().await?;
                let mut body = response.bytes_stream();
                let mut reply = Vec::new();
                while let Some(piece) = body.next().await {
                    if reply.is_empty() {
                        ttfts.push(sent.elapsed());
                    }
                    reply.extend_from_slice(&piece?);
                }
                // One NDJSON line per token, then the final one.
                let content = format!("\"content\":\"{TOKEN}\"");
                received += reply.windows(content.len()).filter(|w| *w == content.as_bytes()).count();
            }
            anyhow::ensure!(received == rounds * tokens, "the double sent {received} tokens, not {}", rounds * tokens);
            anyhow::Ok((ttfts, received))
        })
    });
    let mut phase = Phase::default();
    let mut total = 0;
    for run in futures_util::future::join_all(runs).await {
        let (ttfts, received) = run??;
        phase.ttft.extend(ttfts);
        total += received;
    }
    phase.tokens_per_s = total as f64 / started.elapsed().as_secs_f64();
    Ok(phase)
}

fn authorized<T>(message: T, token: &MetadataValue<tonic::metadata::Ascii>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", token.clone());
    request
}

/// One LLM task through the mesh, with a prompt of its own (so the double says when its chat
/// arrived).
async fn through_mesh(
    client: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
    token: &MetadataValue<tonic::metadata::Ascii>,
    tokens: usize,
    double: &OllamaDouble,
) -> anyhow::Result<Reply> {
    let prompt = ulid::Ulid::new().to_string();
    let llm =
        pb::LlmWork { prompt: prompt.clone(), model: MODEL.into(), max_tokens: tokens as u32, ..Default::default() };
    let spec = pb::TaskSpec {
        work: Some(pb::Work { kind: Some(pb::work::Kind::Llm(llm)) }),
        limits: Some(pb::Limits { max_attempts: 1, ..Default::default() }),
        ..Default::default()
    };
    let sent = Instant::now();
    let submitted =
        client.submit_task(authorized(pb::SubmitTaskRequest { spec: Some(spec) }, token)).await?.into_inner();
    let acknowledged = sent.elapsed();
    let id = submitted.task.map(|t| t.id).unwrap_or_default();
    let mut events = client.watch_task(authorized(pb::WatchTaskRequest { id: id.clone() }, token)).await?.into_inner();
    let (mut ttft, mut bytes, mut state) = (None, 0, 0);
    while let Some(event) = events.next().await {
        match event?.kind {
            Some(pb::task_event::Kind::Output(chunk)) => {
                ttft.get_or_insert_with(|| sent.elapsed());
                bytes = bytes.max(chunk.offset as usize + chunk.data.len());
            }
            Some(pb::task_event::Kind::Snapshot(task)) => state = task.state,
            Some(pb::task_event::Kind::Step(_)) | None => {}
        }
    }
    anyhow::ensure!(state == pb::TaskState::Succeeded as i32, "task {id} ended in state {state}");
    let arrived =
        double.arrived(&prompt).ok_or_else(|| anyhow::anyhow!("task {id}'s chat never reached the double"))?;
    Ok(Reply {
        ttft: ttft.ok_or_else(|| anyhow::anyhow!("task {id} streamed no output"))?,
        submit: acknowledged,
        to_double: arrived.saturating_duration_since(sent),
        bytes,
    })
}

/// One reply through the mesh.
struct Reply {
    ttft: Duration,
    submit: Duration,
    to_double: Duration,
    bytes: usize,
}

async fn mesh(
    hub: &Target,
    admin: &str,
    (streams, rounds, tokens): (usize, usize, usize),
    double: &Arc<OllamaDouble>,
    stagger: Duration,
) -> anyhow::Result<Phase> {
    let token = MetadataValue::try_from(format!("Bearer {admin}"))?;
    let channel = hub.channel().await?;
    let started = Instant::now();
    let runs = (0..streams).map(|i| {
        let (mut client, token) = (pb::admin_client::AdminClient::new(channel.clone()), token.clone());
        let double = double.clone();
        tokio::spawn(async move {
            tokio::time::sleep(stagger * i as u32).await;
            let mut replies = Vec::new();
            for _ in 0..rounds {
                let reply = through_mesh(&mut client, &token, tokens, &double).await?;
                let bytes = reply.bytes;
                anyhow::ensure!(
                    bytes == tokens * TOKEN.len(),
                    "a reply of {bytes} bytes, not {}",
                    tokens * TOKEN.len()
                );
                replies.push(reply);
            }
            anyhow::Ok(replies)
        })
    });
    let mut phase = Phase::default();
    let mut total = 0;
    for run in futures_util::future::join_all(runs).await {
        for reply in run?? {
            phase.ttft.push(reply.ttft);
            phase.submit.push(reply.submit);
            phase.to_double.push(reply.to_double);
            total += reply.bytes / TOKEN.len();
        }
    }
    phase.tokens_per_s = total as f64 / started.elapsed().as_secs_f64();
    Ok(phase)
}

/// The hub's cheapest unary gRPC answer (`GetTask` of a task that does not exist), one at a
/// time: back to back, and after a pause as long as a paced reply's gap (the machine idle, as
/// it is between one stream's submits).
async fn grpc_round_trips(hub: &Target, admin: &str, pause: Duration) -> anyhow::Result<Value> {
    let token = MetadataValue::try_from(format!("Bearer {admin}"))?;
    let channel = hub.channel().await?;
    let mut client = pb::admin_client::AdminClient::new(channel);
    let missing = ulid::Ulid::new().to_string();
    let mut figures = serde_json::Map::new();
    for (name, gap, samples) in [("back_to_back", Duration::ZERO, 2000), ("after_a_pause", pause, 200)] {
        let mut took = Vec::with_capacity(samples);
        for _ in 0..samples {
            if !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            let sent = Instant::now();
            let answer = client.get_task(authorized(pb::GetTaskRequest { id: missing.clone() }, &token)).await;
            took.push(sent.elapsed());
            anyhow::ensure!(answer.is_err_and(|s| s.code() == tonic::Code::NotFound), "GetTask of nothing");
        }
        figures.insert(name.to_owned(), latency_summary(took));
    }
    Ok(Value::Object(figures))
}

/// Waits until the sidecar's inventory shows the model warm on a healthy endpoint.
async fn wait_for_model(hub: &Target, admin: &str) -> anyhow::Result<()> {
    wait_for_model_named(hub, admin, MODEL).await
}

/// Waits until the sidecar's inventory shows `model` warm on a healthy endpoint.
pub(crate) async fn wait_for_model_named(hub: &Target, admin: &str, model: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list: Value = hub.get("/api/v1/endpoints", admin).await?;
        let warm = list["endpoints"].as_array().is_some_and(|endpoints| {
            endpoints.iter().any(|e| {
                e["healthy"] == true
                    && e["models"]
                        .as_array()
                        .is_some_and(|m| m.iter().any(|m| m["name"] == model && m["loaded"] == true))
            })
        });
        if warm {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the sidecar never reported {model} warm");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An Ollama double with `model` (1 GB) loaded.
pub(crate) async fn warm_double(model: &str) -> Arc<OllamaDouble> {
    let double = Arc::new(OllamaDouble::start(vec![FakeModel::new(model, 1_000_000_000, "llama", "1B")]).await);
    double.load(model, 1_000_000_000);
    double
}

/// A reply of `tokens` tokens (each [`TOKEN`]), the first at once, then one every `pace`.
pub(crate) fn script(tokens: usize, pace: Duration) -> ChatScript {
    ChatScript {
        pieces: vec![TOKEN.to_owned(); tokens],
        first_piece_after: Duration::ZERO,
        between_pieces: pace,
        ..ChatScript::default()
    }
}

pub(crate) async fn run(options: Options, dir: &Path) -> anyhow::Result<Value> {
    let double = warm_double(MODEL).await;
    let slots = options.streams.iter().copied().max().unwrap_or(1) as u32;
    let dir = tempfile::tempdir_in(dir)?;
    let fdatasync = crate::fdatasync_latency(dir.path(), 1.0)?;
    let sidecar_flags = ["--ollama", double.url.as_str(), "--llm-check-interval-ms", "200"];
    let (_processes, hub, admin) = start(dir.path(), slots, options.link, options.impair, &sidecar_flags).await?;

    wait_for_model(&hub, &admin).await?;
    let round_trips = grpc_round_trips(&hub, &admin, options.pace).await?;
    // Warm both paths up (connections, first allocations) before measuring.
    double.script(script(options.tokens, Duration::ZERO));
    direct(&double.url, (4, 2, options.tokens), Duration::ZERO).await?;
    mesh(&hub, &admin, (4, 2, options.tokens), &double, Duration::ZERO).await?;
    let percentile = |phase: &Phase, q: f64| {
        let mut sorted = phase.ttft.clone();
        sorted.sort_unstable();
        crate::percentile(&sorted, q)
    };
    let mut phases = Vec::new();
    for &streams in &options.streams {
        double.script(script(options.tokens, Duration::ZERO));
        let shape = (streams, options.rounds, options.tokens);
        let floor = direct(&double.url, shape, Duration::ZERO).await?;
        let through = mesh(&hub, &admin, shape, &double, Duration::ZERO).await?;
        let throughput = json!({
            "replies": streams * options.rounds,
            "tokens_per_reply": options.tokens,
            "mesh_tokens_per_s": through.tokens_per_s.round(),
            "direct_tokens_per_s": floor.tokens_per_s.round(),
        });
        // Streams that start together stay in step (each reply takes as long), so every
        // round is a burst of `streams` submits at once: the machine's worst moment, not the
        // usual one. Spread, their starts are a reply's time apart over all of them, as
        // streams that come and go independently are.
        double.script(script(PACED_TOKENS, options.pace));
        let reply_time = options.pace * PACED_TOKENS as u32;
        let arrivals: &[(&str, Duration)] = if streams == 1 {
            &[("one_stream", Duration::ZERO)]
        } else {
            &[("spread", reply_time / streams as u32), ("together", Duration::ZERO)]
        };
        let mut latency = serde_json::Map::new();
        for &(name, stagger) in arrivals {
            let shape = (streams, options.rounds, PACED_TOKENS);
            let floor = direct(&double.url, shape, stagger).await?;
            let through = mesh(&hub, &admin, shape, &double, stagger).await?;
            let added = json!({
                "p50_us": (percentile(&through, 0.5) - percentile(&floor, 0.5)).round(),
                "p99_us": (percentile(&through, 0.99) - percentile(&floor, 0.99)).round(),
            });
            let figures = json!({
                "starts_apart_us": stagger.as_micros() as u64,
                "replies": streams * options.rounds,
                "tokens_per_reply": PACED_TOKENS,
                "pace_ms": options.pace.as_millis() as u64,
                "ttft_added_by_the_mesh": added,
                "mesh": through.json(),
                "direct_to_the_double": floor.json(),
            });
            latency.insert(name.to_owned(), figures);
        }
        let latency = Value::Object(latency);
        phases.push(json!({ "streams": streams, "throughput": throughput, "time_to_first_token": latency }));
    }
    let link = json!({
        "transport": format!("{:?}", options.link).to_lowercase(),
        "impaired": options.impair.map(|i| {
            json!({ "delay_ms_each_way": i.delay.as_millis() as u64, "udp_loss": i.loss, "udp_max_datagram": i.max_datagram })
        }),
    });
    Ok(
        json!({ "link": link, "floor": { "fdatasync": fdatasync, "grpc_round_trip_to_the_hub": round_trips }, "relay": phases }),
    )
}

/// The hub as the benchmark's clients reach it: directly, pinned to its CA when it serves TLS.
pub(crate) struct Target {
    pub(crate) url: String,
    dialer: Arc<agentcom_link::connect::Dialer>,
    http: reqwest::Client,
}

impl Target {
    fn new(url: String, ca: Option<agentcom_link::Fingerprint>) -> anyhow::Result<Target> {
        let pin = ca.map(|ca| agentcom_link::tls::Pin::fingerprint(ca, "the benchmark's hub"));
        let mut http = reqwest::Client::builder().tcp_nodelay(true);
        if let Some(pin) = &pin {
            http = http.use_preconfigured_tls(agentcom_link::tls::client_config(
                pin.clone(),
                None,
                &[b"http/1.1"],
                false,
            )?);
        }
        let dialer = agentcom_link::connect::Dialer::new(agentcom_link::connect::HubUrl::parse(&url)?, pin, None)?;
        Ok(Target { url, dialer: Arc::new(dialer), http: http.build()? })
    }

    async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        Ok(agentcom_link::connect::channel(self.dialer.clone()).await?)
    }

    async fn get(&self, path: &str, admin: &str) -> anyhow::Result<Value> {
        Ok(self.http.get(format!("{}{path}", self.url)).bearer_auth(admin).send().await?.json().await?)
    }

    pub(crate) async fn post(&self, path: &str, admin: &str, body: Value) -> anyhow::Result<Value> {
        Ok(self.http.post(format!("{}{path}", self.url)).bearer_auth(admin).json(&body).send().await?.json().await?)
    }
}

/// A hub and one sidecar process, the sidecar on `link` (through the impairing relay with
/// `impair`), its agents idle.
pub(crate) async fn start(
    dir: &Path,
    slots: u32,
    link: Link,
    impair: Option<Impairment>,
    sidecar_flags: &[&str],
) -> anyhow::Result<(crate::shell::Processes, Target, String)> {
    use std::process::{Command, Stdio};
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let quic_port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let data_dir = dir.join("hub");
    let work = dir.join("work");
    std::fs::create_dir_all(&work)?;
    let mut hub = Command::new(crate::shell::binary("agentcom-hub")?);
    hub.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--backup-interval-ms", "0"])
        .arg("--data-dir")
        .arg(&data_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    match link {
        Link::Plain => drop(hub.arg("--insecure-plaintext")),
        Link::Tls => {}
        Link::Quic => drop(hub.args(["--quic-listen", &format!("127.0.0.1:{quic_port}")])),
    }
    let mut processes = crate::shell::Processes(vec![hub.spawn()?]);
    let scheme = if link == Link::Plain { "http" } else { "https" };
    let url = format!("{scheme}://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    // The token file is written before the hub listens.
    let file = loop {
        let text = std::fs::read_to_string(data_dir.join("admin.token")).unwrap_or_default();
        if let Ok(file) = agentcom_link::token_file::TokenFile::parse(&text)
            && !file.token.is_empty()
            && (link == Link::Plain || file.ca.is_some())
        {
            break file;
        }
        anyhow::ensure!(Instant::now() < deadline, "the hub wrote no admin token");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let target = Target::new(url.clone(), file.ca)?;
    while target.http.get(format!("{url}/readyz")).send().await.map(|r| r.status().is_success()).ok() != Some(true) {
        anyhow::ensure!(Instant::now() < deadline, "the hub did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let admin = file.token;
    // Where the sidecar dials: the hub, or the relay in front of it.
    let sidecar_url = match (link, impair) {
        (Link::Quic, None) => format!("quic://127.0.0.1:{quic_port}"),
        (Link::Quic, Some(i)) => {
            format!("quic://{}", UdpRelay::start(([127, 0, 0, 1], quic_port).into(), i).await.addr)
        }
        (_, None) => url.clone(),
        (_, Some(i)) => format!("{scheme}://{}", TcpRelay::start(([127, 0, 0, 1], port).into(), i.delay).await.addr),
    };
    let mut sidecar = Command::new(crate::shell::binary("agentcom-sidecar")?);
    sidecar
        .args(["run", "--hub", &sidecar_url, "--slots", &slots.to_string(), "--no-ollama-discovery"])
        .arg("--work-dir")
        .arg(&work)
        .arg("--state-dir")
        .arg(dir.join("sidecar-state"))
        .args(sidecar_flags)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if link == Link::Plain {
        sidecar.arg("--token-file").arg(data_dir.join("join.token"));
    } else {
        let made: Value = target
            .http
            .post(format!("{url}/api/v1/join-tokens"))
            .bearer_auth(&admin)
            .json(&json!({ "uses": 1 }))
            .send()
            .await?
            .json()
            .await?;
        let token = made["token"].as_str().ok_or_else(|| anyhow::anyhow!("no join token: {made}"))?;
        sidecar.env("AGENTCOM_JOIN", token);
    }
    processes.0.push(sidecar.spawn()?);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let agents = target.get("/api/v1/agents", &admin).await?;
        let idle = agents["agents"].as_array().map_or(0, |a| a.iter().filter(|a| a["state"] == "idle").count());
        if idle == slots as usize {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the sidecar did not join");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((processes, target, admin))
}
