//! `meshbench gateway`: chat requests through the hub's gateway (`/api/chat`, Ollama's API, the
//! same as the double's) and through a sidecar process to an Ollama protocol double, beside the
//! same requests sent to the double directly (the floor) and through a minimal Python proxy in
//! front of the same double (`integration/clients/proxy.py`: httpx relaying bytes, nothing else;
//! the least a Python proxy such as LiteLLM's costs).
//!
//! At each concurrency (`--streams`, each stream sending its requests one after another):
//! - time to first token, the double pacing its tokens as a model does (`--pace-ms`): from
//!   sending the request to the first token's bytes at the client; the gateway's figure less the
//!   direct one is what the gateway adds (the key's checks, the durable submit, placement, the
//!   assignment, the sidecar's request, and the token's way back through sidecar and hub);
//! - requests per second, the double answering at once (`--tokens` tokens, no pause): every
//!   request over the wall time of the phase.
//!
//! The Python proxy needs a Python with httpx: `AGENTCOM_PYTHON`, else `target/pyclients`
//! (`scripts/test` makes it); without one its figures say it was not measured.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::relay::{Link, TOKEN};

const MODEL: &str = "gateway:1b";
/// Tokens in each reply of the latency phase.
const PACED_TOKENS: usize = 10;

pub(crate) struct Options {
    pub(crate) streams: Vec<usize>,
    pub(crate) rounds: usize,
    pub(crate) tokens: usize,
    pub(crate) pace: Duration,
}

/// What one path measured at one concurrency.
#[derive(Default)]
struct Phase {
    ttft: Vec<Duration>,
    requests: usize,
    seconds: f64,
}

/// `streams` clients each sending `rounds` chats to `url` (`/api/chat` there), one after another.
async fn chats(
    http: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    (streams, rounds, tokens): (usize, usize, usize),
) -> anyhow::Result<Phase> {
    let started = Instant::now();
    let runs = (0..streams).map(|_| {
        let (http, url, key) = (http.clone(), url.to_owned(), key.map(str::to_owned));
        tokio::spawn(async move {
            let mut ttfts = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let body = json!({ "model": MODEL, "messages": [{ "role": "user", "content": "go" }], "stream": true });
                let sent = Instant::now();
                let mut request = http.post(format!("{url}/api/chat")).json(&body);
                if let Some(key) = &key {
                    request = request.bearer_auth(key);
                }
                let response = request.send().await?;
                anyhow::ensure!(response.status().is_success(), "{url}: {}", response.status());
                let mut body = response.bytes_stream();
                let (mut reply, mut first) = (Vec::new(), None);
                while let Some(piece) = body.next().await {
                    reply.extend_from_slice(&piece?);
                    if first.is_none() && reply.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()) {
                        first = Some(sent.elapsed());
                    }
                }
                // The gateway sends what arrived together as one piece: count the tokens' text.
                let received = reply.windows(TOKEN.len()).filter(|w| *w == TOKEN.as_bytes()).count();
                anyhow::ensure!(received == tokens, "{url}: a reply of {received} tokens, not {tokens}");
                anyhow::ensure!(reply.windows(11).any(|w| w == b"\"done\":true"), "{url}: a reply without its end");
                ttfts.push(first.ok_or_else(|| anyhow::anyhow!("{url}: no token"))?);
            }
            anyhow::Ok(ttfts)
        })
    });
    let mut phase = Phase::default();
    for run in futures_util::future::join_all(runs).await {
        let ttfts = run??;
        phase.requests += ttfts.len();
        phase.ttft.extend(ttfts);
    }
    phase.seconds = started.elapsed().as_secs_f64();
    Ok(phase)
}

fn p(phase: &Phase, q: f64) -> f64 {
    let mut sorted = phase.ttft.clone();
    sorted.sort_unstable();
    crate::percentile(&sorted, q)
}

/// The Python proxy, killed when dropped.
struct Proxy(std::process::Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Python proxy in front of `upstream`, if a Python with httpx is here.
fn python_proxy(upstream: &str) -> anyhow::Result<Option<(Proxy, String)>> {
    use std::io::BufRead;
    let made = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyclients/bin/python");
    let python = std::env::var_os("AGENTCOM_PYTHON").map(std::path::PathBuf::from).unwrap_or(made);
    if !python.exists() {
        return Ok(None);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/proxy.py");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut child = std::process::Command::new(python)
        .arg(script)
        .args([port.to_string(), upstream.to_owned()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let child = Proxy(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    anyhow::ensure!(line.trim() == "ready", "the Python proxy did not start");
    Ok(Some((child, format!("http://127.0.0.1:{port}"))))
}

pub(crate) async fn run(options: Options, dir: &Path) -> anyhow::Result<Value> {
    let double = crate::relay::warm_double(MODEL).await;
    let script = crate::relay::script;
    let most = options.streams.iter().copied().max().unwrap_or(1);
    let dir = tempfile::tempdir_in(dir)?;
    let fdatasync = crate::fdatasync_latency(dir.path(), 1.0)?;
    let parallel = most.to_string();
    let flags = ["--ollama", double.url.as_str(), "--ollama-parallel", &parallel, "--llm-check-interval-ms", "200"];
    let (_processes, hub, admin) = crate::relay::start(dir.path(), most as u32, Link::Plain, None, &flags).await?;
    crate::relay::wait_for_model_named(&hub, &admin, MODEL).await?;
    // A key as tools get one, with limits to check (none that a phase reaches).
    let made: Value = hub
        .post("/api/v1/tokens", &admin, json!({"role": "inference", "name": "meshbench", "limits": {"rpm": 1_000_000}}))
        .await?;
    let key = made["secret"].as_str().ok_or_else(|| anyhow::anyhow!("no key: {made}"))?.to_owned();
    let proxy = python_proxy(&double.url)?;
    let http = reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(2048).build()?;
    // Warm every path up (connections, first allocations) before measuring.
    double.script(script(options.tokens, Duration::ZERO));
    chats(&http, &double.url, None, (4, 4, options.tokens)).await?;
    chats(&http, &hub.url, Some(&key), (4, 4, options.tokens)).await?;
    if let Some((_, url)) = &proxy {
        chats(&http, url, None, (4, 4, options.tokens)).await?;
    }

    let mut phases = Vec::new();
    for &streams in &options.streams {
        let mut figures = serde_json::Map::new();
        figures.insert("streams".into(), json!(streams));
        // Time to first token, paced replies.
        double.script(script(PACED_TOKENS, options.pace));
        let shape = (streams, options.rounds, PACED_TOKENS);
        let direct = chats(&http, &double.url, None, shape).await?;
        let gateway = chats(&http, &hub.url, Some(&key), shape).await?;
        let python = match &proxy {
            Some((_, url)) => Some(chats(&http, url, None, shape).await?),
            None => None,
        };
        let added = |through: &Phase| {
            json!({
                "p50_us": (p(through, 0.5) - p(&direct, 0.5)).round(),
                "p99_us": (p(through, 0.99) - p(&direct, 0.99)).round(),
            })
        };
        figures.insert(
            "time_to_first_token".into(),
            json!({
                "pace_ms": options.pace.as_millis() as u64,
                "replies": streams * options.rounds,
                "added_by_the_gateway": added(&gateway),
                "added_by_the_python_proxy": python.as_ref().map(added),
                "gateway": crate::latency_summary(gateway.ttft.clone()),
                "python_proxy": python.as_ref().map(|p| crate::latency_summary(p.ttft.clone())),
                "direct_to_the_double": crate::latency_summary(direct.ttft.clone()),
            }),
        );
        // Requests per second, the double answering at once.
        double.script(script(options.tokens, Duration::ZERO));
        let shape = (streams, options.rounds, options.tokens);
        let direct = chats(&http, &double.url, None, shape).await?;
        let gateway = chats(&http, &hub.url, Some(&key), shape).await?;
        let python = match &proxy {
            Some((_, url)) => Some(chats(&http, url, None, shape).await?),
            None => None,
        };
        let rate = |phase: &Phase| (phase.requests as f64 / phase.seconds).round();
        figures.insert(
            "requests_per_s".into(),
            json!({
                "tokens_per_reply": options.tokens,
                "gateway": rate(&gateway),
                "python_proxy": python.as_ref().map(rate),
                "gateway_over_python_proxy": python.as_ref().map(|p| ((rate(&gateway) / rate(p)) * 10.0).round() / 10.0),
                "direct_to_the_double": rate(&direct),
            }),
        );
        phases.push(Value::Object(figures));
    }
    let reference = if proxy.is_some() {
        json!("integration/clients/proxy.py: httpx relaying bytes, in asyncio")
    } else {
        json!("not measured: no Python with httpx (set AGENTCOM_PYTHON, or run scripts/test once)")
    };
    Ok(json!({
        "floor": { "fdatasync": fdatasync },
        "python_proxy": reference,
        "gateway": phases,
    }))
}
