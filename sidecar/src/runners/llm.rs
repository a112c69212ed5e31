//! LLM work: one streaming chat against this sidecar's Ollama, OpenAI-compatible server or the
//! Claude API (`agentcom_llm::chat`), with the text streamed to the hub as it arrives and the
//! usage measured here.
//!
//! The endpoint is the one the hub placed the task on, when it named one and it still has the
//! model; otherwise it comes from this sidecar's latest inventory (the same probes it reports):
//! the model the task names (`work.llm.model`, else `placement.model`) on a healthy endpoint,
//! warm before cold; with no model named, a warm one, then any. While Ollama loads a cold model
//! the agent is `blocked`, and `working` again at the first token.
//!
//! Text goes out as output chunks: the first at once, later ones coalesced for at most
//! [`COALESCE`]. Cancel and timeout drop the request, which closes the connection upstream.
//! Transient provider errors (429, 500, 503, 529) before any text are retried with jittered
//! backoff, honouring `retry-after`, within the task's timeout.
//!
//! A reply is whole only when it ends with its API's end marker; one cut short fails the attempt
//! as `truncated`, a connection broken mid-reply as `stream_broken`, an endpoint down before the
//! work began as `endpoint_down` (each keeping the text so far, and retried by the hub). Usage is
//! the server's count when it sends one, else this sidecar's, marked `estimated`: the server's
//! tokenizer for the input where it has one (counted only while nothing else is in flight
//! there, since llama.cpp's server interrupts a generation for any request), and the streamed
//! pieces for the output.

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentcom_llm::chat::{self, FailureReason, Provider};
use agentcom_types::domain::{Exit, LlmWork, Outcome, Stream, TokenPrice, Usage, Work};
use agentcom_types::fleet::{Endpoint, EndpointKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::failed_to_start;
use crate::job::{Attempt, Runner, Running, Sink};
use crate::reports::{self, InFlight};

/// Longest a piece of text waits to be sent with the next.
pub const COALESCE: Duration = Duration::from_millis(10);
/// How long a task waits for the sidecar's first inventory when it arrives right after start.
pub(super) const FIRST_INVENTORY: Duration = Duration::from_secs(5);
pub(crate) const MAX_RETRIES: u32 = 4;

pub struct LlmRunner {
    settings: reports::Settings,
    /// The latest inventory: this sidecar's endpoints and their models.
    inventory: watch::Receiver<Option<Vec<Endpoint>>>,
    /// Requests in flight to each endpoint, shared with the model reporter.
    in_flight: InFlight,
    client: reqwest::Client,
}

impl LlmRunner {
    pub fn new(
        settings: reports::Settings,
        inventory: watch::Receiver<Option<Vec<Endpoint>>>,
        in_flight: InFlight,
    ) -> LlmRunner {
        LlmRunner { settings, inventory, in_flight, client: chat::client() }
    }

    /// Whether this sidecar has any provider configured (otherwise it takes no LLM work).
    pub fn configured(settings: &reports::Settings) -> bool {
        !settings.ollama.is_empty() || settings.openai.is_some() || settings.anthropic.is_some()
    }
}

/// Where one attempt goes.
#[derive(Debug, PartialEq)]
pub(crate) struct Choice {
    pub(super) target_url: String,
    pub(super) provider: Provider,
    pub(super) endpoint_id: String,
    pub(super) model: String,
    /// Ollama has to load the model first.
    cold: bool,
}

fn provider_of(kind: EndpointKind) -> Provider {
    match kind {
        EndpointKind::Ollama => Provider::Ollama,
        EndpointKind::Anthropic => Provider::Anthropic,
        EndpointKind::Openai => Provider::OpenAi,
    }
}

/// Picks the endpoint and model for `wanted` (empty: any) from `inventory`. Pure.
pub(super) fn choose(inventory: &[Endpoint], wanted: &str) -> Result<Choice, String> {
    let healthy = || inventory.iter().filter(|e| e.healthy);
    let choice = |e: &Endpoint, model: &str, cold: bool| Choice {
        target_url: e.url.clone(),
        provider: provider_of(e.kind),
        endpoint_id: e.id.clone(),
        model: model.to_owned(),
        cold: cold && e.kind == EndpointKind::Ollama,
    };
    if wanted.is_empty() {
        // A warm model first, then any model of a local server, then the Claude API.
        let warm = healthy().find_map(|e| e.models.iter().find(|m| m.loaded).map(|m| choice(e, &m.name, false)));
        let local = || {
            healthy()
                .filter(|e| e.kind != EndpointKind::Anthropic)
                .find_map(|e| e.models.first().map(|m| choice(e, &m.name, !m.loaded)))
        };
        let cloud = || healthy().find_map(|e| e.models.first().map(|m| choice(e, &m.name, false)));
        let none = || {
            let why = "no model given, and this sidecar's endpoints offer none (give work.llm.model)";
            match inventory.iter().find(|e| !e.healthy && !e.models.is_empty()) {
                Some(down) => FailureReason::EndpointDown.error(format!("{why}: {} is down", down.url)),
                None => why.to_owned(),
            }
        };
        return warm.or_else(local).or_else(cloud).ok_or_else(none);
    }
    let mut with_model: Vec<(&Endpoint, bool)> =
        healthy().filter_map(|e| e.models.iter().find(|m| m.name == wanted).map(|m| (e, m.loaded))).collect();
    // Warm before cold; otherwise the inventory's order.
    with_model.sort_by_key(|(_, loaded)| !*loaded);
    if let Some((endpoint, loaded)) = with_model.first() {
        return Ok(choice(endpoint, wanted, !loaded));
    }
    // The Claude API serves models by name beyond those advertised.
    if wanted.starts_with("claude-")
        && let Some(anthropic) = healthy().find(|e| e.kind == EndpointKind::Anthropic)
    {
        return Ok(choice(anthropic, wanted, false));
    }
    // The model is where the hub saw it, but that endpoint is down now: the work may run when it
    // is back, or elsewhere. A down endpoint that has listed nothing yet (its first check failed,
    // or it went down while restarting and forgot its list) may be the one that serves it.
    let down =
        inventory.iter().any(|e| !e.healthy && (e.models.is_empty() || e.models.iter().any(|m| m.name == wanted)));
    let offered: Vec<String> = inventory
        .iter()
        .map(|e| {
            let models: Vec<&str> = e.models.iter().map(|m| m.name.as_str()).collect();
            let health = if e.healthy { "" } else { ", down" };
            format!(
                "{} {}{health}: {}",
                e.kind.as_str(),
                e.url,
                if models.is_empty() { "none".into() } else { models.join(", ") }
            )
        })
        .collect();
    let why = format!("model {wanted} is on none of this sidecar's healthy endpoints ({})", offered.join("; "));
    Err(if down { FailureReason::EndpointDown.error(why) } else { why })
}

impl Runner for LlmRunner {
    fn capability(&self) -> &'static str {
        "llm"
    }

    fn advertises(&self) -> Vec<String> {
        let mut names = vec!["llm".to_owned()];
        if !self.settings.ollama.is_empty() {
            names.push("ollama".into());
        }
        if self.settings.openai.is_some() {
            names.push("openai".into());
        }
        if self.settings.anthropic.is_some() {
            names.push("anthropic".into());
        }
        names
    }

    fn run(&self, Attempt { assignment, .. }: Attempt, sink: Arc<dyn Sink>, cancel: CancellationToken) -> Running {
        let (settings, mut inventory, client) = (self.settings.clone(), self.inventory.clone(), self.client.clone());
        let in_flight = self.in_flight.clone();
        Box::pin(async move {
            let Work::Llm(work) = &assignment.spec.work else {
                return failed_to_start(format!("{} work is not LLM work", assignment.spec.work.capability()));
            };
            // Right after start the first check may still be running.
            let _ = tokio::time::timeout(FIRST_INVENTORY, inventory.wait_for(Option::is_some)).await;
            let mut endpoints = inventory.borrow().clone().unwrap_or_default();
            if assignment.spec.placement.local_only {
                endpoints.retain(|e| !agentcom_types::fleet::is_cloud(e)); // Private work stays here.
            }
            let wanted = match (work.model.as_str(), assignment.spec.placement.model.as_str()) {
                ("", "") => assignment.model.as_deref().unwrap_or_default(),
                ("", placed) => placed,
                (named, _) => named,
            };
            let placed = assignment.endpoint_id.as_deref().and_then(|id| endpoints.iter().find(|e| e.id == id));
            let choice = match placed {
                // Where the hub placed it, unless that endpoint no longer has the model here.
                Some(endpoint) => {
                    choose(std::slice::from_ref(endpoint), wanted).or_else(|_| choose(&endpoints, wanted))
                }
                None => choose(&endpoints, wanted),
            };
            let choice = match choice {
                Ok(choice) => choice,
                Err(why) => return failed_to_start(why),
            };
            let target = target(&settings, &choice);
            if super::llm_tools::wanted(work) {
                let timeout = assignment.spec.limits.timeout_ms.map(Duration::from_millis);
                let span = crate::spans::llm_call(assignment.trace.as_ref(), target.provider.as_str(), &choice.model);
                let streaming = in_flight.enter(&choice.target_url);
                let outcome = tokio::select! {
                    outcome = super::llm_tools::run(&client, &target, work, &choice, sink, timeout) => outcome,
                    _ = cancel.cancelled() => Outcome { error: Some("cancelled".into()), ..Outcome::empty() },
                };
                drop(streaming);
                crate::spans::llm_finished(span, &outcome);
                return outcome;
            }
            let request = request(work, &choice.model);
            let limits = &assignment.spec.limits;
            let budget = Budget {
                max_tokens: limits.max_tokens,
                max_cost_micros: limits.max_cost_micros,
                price: assignment.price_of(&choice.model),
                input_estimate: estimate_input(&request),
            };
            let timeout = limits.timeout_ms.map(Duration::from_millis);
            let cap = usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX);
            let span = crate::spans::llm_call(assignment.trace.as_ref(), target.provider.as_str(), &choice.model);
            let attempt = attempt(&client, &target, &request, &choice, &in_flight, sink, cap, budget);
            let outcome = tokio::select! {
                outcome = run_within(timeout, attempt) => outcome,
                _ = cancel.cancelled() => Outcome { error: Some("cancelled".into()), ..Outcome::empty() },
            };
            crate::spans::llm_finished(span, &outcome);
            outcome
        })
    }
}

/// Where `choice` is sent, with the provider's key from the sidecar's settings.
pub(super) fn target(settings: &reports::Settings, choice: &Choice) -> chat::Target {
    let api_key = match choice.provider {
        Provider::Anthropic => settings.anthropic.as_ref().map(|a| a.api_key.clone()),
        Provider::OpenAi => settings.openai.as_ref().and_then(|o| o.api_key.clone()),
        Provider::Ollama => None,
    };
    chat::Target { provider: choice.provider, base_url: choice.target_url.clone(), api_key }
}

/// The pause before retry `retries` (1 and up) of a busy provider: jittered exponential
/// backoff, or the provider's `retry-after` if longer.
pub(crate) fn retry_pause(err: &chat::Error, retries: u32) -> Duration {
    let backoff = Duration::from_millis(500 << retries).mul_f64(0.5 + rand::random::<f64>() * 0.5);
    match err {
        chat::Error::Provider { retry_after: Some(after), .. } => (*after).max(backoff),
        _ => backoff,
    }
}

fn request(work: &LlmWork, model: &str) -> chat::Request {
    chat::Request {
        model: model.to_owned(),
        system: work.system.clone(),
        messages: work
            .turns()
            .into_iter()
            .map(|t| chat::Message { role: t.role.as_str().to_owned(), content: t.content })
            .collect(),
        max_tokens: work.max_tokens,
        temperature: work.temperature,
        stop: work.stop.clone(),
        json: work.json,
        keep_alive: work.keep_alive.clone(),
    }
}

/// Runs `work` to its end, or to the timeout (dropping it, which closes the connection).
async fn run_within(timeout: Option<Duration>, work: impl Future<Output = Outcome>) -> Outcome {
    let started = Instant::now();
    match timeout {
        None => work.await,
        Some(limit) => match tokio::time::timeout(limit, work).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome {
                timed_out: true,
                duration_ms: started.elapsed().as_millis() as u64,
                error: Some(format!("timed out after {} ms", limit.as_millis())),
                ..Outcome::empty()
            },
        },
    }
}

/// Where the work stops: the task's budgets (`limits.max_tokens` counts every token read and
/// written, `limits.max_cost_micros` prices them at the placed model's price).
///
/// While text streams, output tokens are estimated (a piece of text is a token, or one per six
/// characters of a longer piece), and input tokens are the provider's count once it gives one
/// (Anthropic does at the start), else one per four characters of the request. The hub judges the
/// final usage again with its price table.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Budget {
    max_tokens: Option<u64>,
    max_cost_micros: Option<u64>,
    price: Option<TokenPrice>,
    input_estimate: u64,
}

impl Budget {
    /// Whether `output` tokens after the input (`input`: the provider's count) reach a budget.
    fn reached(&self, input: Option<u64>, output: u64) -> bool {
        let input = input.unwrap_or(self.input_estimate);
        let tokens = self.max_tokens.is_some_and(|max| input + output >= max);
        let cost = match (self.max_cost_micros, self.price) {
            (Some(max), Some(price)) => price.micros(input, output) >= max as f64,
            _ => false,
        };
        tokens || cost
    }
}

/// Output tokens in a piece of streamed text, estimated.
fn estimate_output(piece: &str) -> u64 {
    (piece.chars().count() as u64 / 6).max(1)
}

/// Input tokens of a request, estimated (one per four characters).
fn estimate_input(request: &chat::Request) -> u64 {
    let chars: usize =
        request.system.chars().count() + request.messages.iter().map(|m| m.content.chars().count()).sum::<usize>();
    chars.div_ceil(4) as u64
}

/// The text so far: what is kept (up to the cap) and what is still to send.
#[derive(Default)]
struct Text {
    kept: Vec<u8>,
    total: u64,
    unsent: Vec<u8>,
    sent_any: bool,
    offset: u64,
    /// Estimated, for the budget.
    output_tokens: u64,
    /// The provider's input count when the budget was reached.
    input_tokens: Option<u64>,
    /// Pieces of text streamed: about a token each from a server that streams token by token.
    pieces: u64,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
}

/// One request, retried while the provider says it is busy and nothing was streamed yet.
#[allow(clippy::too_many_arguments)] // One attempt's inputs, each distinct; a struct would only rename them.
async fn attempt(
    client: &reqwest::Client,
    target: &chat::Target,
    request: &chat::Request,
    choice: &Choice,
    in_flight: &InFlight,
    sink: Arc<dyn Sink>,
    cap: usize,
    budget: Budget,
) -> Outcome {
    let started = Instant::now();
    sink.started(0); // No process: the hub only needs to know the attempt began.
    if choice.cold {
        sink.progress(true, &format!("loading {} on {}", choice.model, choice.target_url));
    }
    // Reported blocked (loading, or waiting to retry): the first text unblocks the agent.
    let blocked = std::sync::atomic::AtomicBool::new(choice.cold);
    let text = Arc::new(Mutex::new(Text::default()));
    // The coalescer: whatever arrived since the last send goes out every COALESCE.
    let flusher = {
        let (text, sink) = (text.clone(), sink.clone());
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(COALESCE);
            loop {
                ticker.tick().await;
                flush(&text, sink.as_ref());
            }
        })
    };
    let mut retries = 0;
    let result = loop {
        let on_text = |piece: &str, input: Option<u64>| {
            let mut t = text.lock().expect("text lock poisoned");
            let first = !t.sent_any;
            t.total += piece.len() as u64;
            let room = cap.saturating_sub(t.kept.len());
            let keep = &piece.as_bytes()[..piece.len().min(room)];
            t.kept.extend_from_slice(keep);
            t.unsent.extend_from_slice(keep);
            t.output_tokens += estimate_output(piece);
            t.pieces += 1;
            let now = Instant::now();
            t.first_at.get_or_insert(now);
            t.last_at = Some(now);
            t.input_tokens = input;
            let reached = budget.reached(input, t.output_tokens);
            drop(t);
            if first {
                if blocked.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    sink.progress(false, "generating");
                }
                flush(&text, sink.as_ref()); // The first token at once.
            }
            if reached { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        };
        let streaming = in_flight.enter(&choice.target_url);
        let result = chat::stream(client, target, request, on_text).await;
        drop(streaming);
        match result {
            Err(err) if err.is_transient() && retries < MAX_RETRIES && !text.lock().expect("lock").sent_any => {
                retries += 1;
                let pause = retry_pause(&err, retries);
                blocked.store(true, std::sync::atomic::Ordering::Relaxed);
                sink.progress(true, &format!("{err}; retrying in {} ms", pause.as_millis()));
                tokio::time::sleep(pause).await;
            }
            result => break result,
        }
    };
    flusher.abort();
    flush(&text, sink.as_ref());
    let mut text = std::mem::take(&mut *text.lock().expect("text lock poisoned"));
    let stdout = std::mem::take(&mut text.kept);
    let (finished, error) = match result {
        Ok(finished) => (Some(finished), None),
        Err(err) => (None, Some(err)),
    };
    let counts = finished.as_ref().map(|f| f.counts.clone()).unwrap_or_default();
    let stopped = finished.as_ref().is_some_and(|f| f.stopped);
    // Stopped at the budget, the provider's counts end early: the estimates fill in.
    let (mut input_tokens, mut output_tokens) = if stopped {
        let input = text.input_tokens.map_or(budget.input_estimate, |_| counts.input_tokens);
        (input, counts.output_tokens.max(text.output_tokens))
    } else {
        (counts.input_tokens, counts.output_tokens)
    };
    // A server that counts nothing (llama.cpp's ignores `include_usage`), or a reply that never
    // reached its counts: this sidecar counts.
    let estimated = input_tokens == 0 && output_tokens == 0 && (text.pieces > 0 || error.is_none());
    if estimated {
        output_tokens = text.pieces;
        input_tokens = count_input(client, target, request, &choice.target_url, in_flight).await;
    }
    let ttft = finished.as_ref().and_then(|f| f.ttft).or(text.first_at.map(|at| at.duration_since(started)));
    let generating = match &finished {
        Some(f) => f.elapsed.saturating_sub(f.ttft.unwrap_or_default()),
        None => text.last_at.zip(text.first_at).map(|(last, first)| last.duration_since(first)).unwrap_or_default(),
    };
    let per_s = match counts.eval_ns {
        Some(ns) if ns > 0 && !estimated => Some(counts.output_tokens as f64 * 1e9 / ns as f64),
        _ if !generating.is_zero() && output_tokens > 0 => Some(output_tokens as f64 / generating.as_secs_f64()),
        _ => None,
    };
    let usage = Usage {
        provider: target.provider.as_str().to_owned(),
        endpoint_id: choice.endpoint_id.clone(),
        model: if counts.model.is_empty() { choice.model.clone() } else { counts.model.clone() },
        input_tokens,
        output_tokens,
        cached_input_tokens: counts.cached_input_tokens,
        cache_write_tokens: counts.cache_write_tokens,
        ttft_ms: ttft.map(|t| t.as_millis() as u64),
        output_tokens_per_s: per_s,
        load_ms: counts.load_ns.map(|ns| ns / 1_000_000),
        cost_micros: None,
        estimated,
        stop_reason: counts.stop_reason.clone(),
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    // Nothing was asked of the server (it was down before the work began): no usage.
    let usage =
        (finished.is_some() || text.pieces > 0 || !matches!(error, Some(chat::Error::Transport(_)))).then_some(usage);
    Outcome {
        // Stopped at the budget, the work did not end by itself.
        exit: if finished.is_some() && !stopped { Exit::Code(0) } else { Exit::Unknown },
        duration_ms,
        stdout,
        stdout_total_bytes: text.total,
        usage,
        budget_exceeded: stopped,
        error: error.map(|err| err.describe()),
        ..Outcome::empty()
    }
}

/// Input tokens of `request`, counted by the server's tokenizer when it has one and nothing else
/// is in flight there (a count is a request, and llama.cpp's server interrupts a generation for
/// any), else estimated from its characters. Chat templates wrap each message in a few tokens
/// (a role line and an end marker: five for ChatML, Gemma and Llama 3) and prime the reply with
/// about three more.
async fn count_input(
    client: &reqwest::Client,
    target: &chat::Target,
    request: &chat::Request,
    url: &str,
    in_flight: &InFlight,
) -> u64 {
    let messages = request.messages.len() as u64 + u64::from(!request.system.is_empty());
    let framing = 5 * messages + 3;
    let mut contents: Vec<&str> = Vec::new();
    if !request.system.is_empty() {
        contents.push(&request.system);
    }
    contents.extend(request.messages.iter().map(|m| m.content.as_str()));
    let text = contents.join("\n");
    if target.provider == Provider::OpenAi && in_flight.count(url) == 0 {
        let _counting = in_flight.enter(url);
        let key = target.api_key.as_deref();
        if let Some(count) = agentcom_llm::count_tokens(client, &target.base_url, key, &request.model, &text).await {
            return count + framing;
        }
    }
    estimate_input(request) + framing
}

fn flush(text: &Mutex<Text>, sink: &dyn Sink) {
    let mut t = text.lock().expect("text lock poisoned");
    if t.unsent.is_empty() {
        return;
    }
    let piece = std::mem::take(&mut t.unsent);
    let offset = t.offset;
    t.offset += piece.len() as u64;
    t.sent_any = true;
    drop(t);
    sink.output(Stream::Stdout, offset, &piece);
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentcom_types::fleet::{Model, Owner};

    fn endpoint(kind: EndpointKind, url: &str, models: &[(&str, bool)], healthy: bool) -> Endpoint {
        let mut e = Endpoint::new(Owner::Sidecar("s".into()), url.into(), kind);
        e.healthy = healthy;
        e.models = models.iter().map(|(name, loaded)| Model { loaded: *loaded, ..Model::named(*name) }).collect();
        e
    }

    #[test]
    fn a_budget_is_reached_at_its_tokens_or_its_cost() {
        let tokens = Budget { max_tokens: Some(10), input_estimate: 4, ..Budget::default() };
        assert!(!tokens.reached(None, 5) && tokens.reached(None, 6), "the estimate counts until the provider's");
        assert!(!tokens.reached(Some(2), 7) && tokens.reached(Some(2), 8));
        let price = TokenPrice { input: 3.0, output: 15.0 };
        let cost = Budget { max_cost_micros: Some(100), price: Some(price), input_estimate: 10, ..Budget::default() };
        assert!(!cost.reached(None, 4) && cost.reached(None, 5), "30 + 5 x 15 >= 100");
        let unpriced = Budget { max_cost_micros: Some(1), ..Budget::default() };
        assert!(!unpriced.reached(Some(1_000), 1_000), "no price: the hub judges the final usage");
        assert_eq!((estimate_output("a"), estimate_output("tok "), estimate_output(&"x".repeat(36))), (1, 1, 6));
    }

    #[test]
    fn the_named_model_goes_where_it_is_warm_then_where_it_is_cold() {
        let a = endpoint(EndpointKind::Ollama, "http://a", &[("llama3.2:3b", false)], true);
        let b = endpoint(EndpointKind::Ollama, "http://b", &[("llama3.2:3b", true)], true);
        let down = endpoint(EndpointKind::Ollama, "http://c", &[("qwen", true)], false);
        let inventory = [a.clone(), b.clone(), down];
        let warm = choose(&inventory, "llama3.2:3b").unwrap();
        assert_eq!((warm.target_url.as_str(), warm.cold, warm.endpoint_id), ("http://b", false, b.id.clone()));
        let cold = choose(&inventory[..1], "llama3.2:3b").unwrap();
        assert!(cold.cold);
        let missing = choose(&inventory, "qwen").unwrap_err();
        assert!(missing.contains("model qwen is on none") && missing.contains("http://c, down: qwen"), "{missing}");
        assert!(missing.starts_with("endpoint_down"), "retried: the endpoint may come back: {missing}");
        // A server being restarted: down, with no list of models. It may serve the model when it
        // is back (the hub placed the work here for it), so the attempt is retried, not failed.
        let restarting = endpoint(EndpointKind::Openai, "http://l/v1", &[], false);
        let unknown = choose(std::slice::from_ref(&restarting), "gemma.gguf").unwrap_err();
        assert!(unknown.starts_with("endpoint_down") && unknown.contains("http://l/v1, down: none"), "{unknown}");
        // Up and listing other models: this sidecar does not have it, and no retry will change that.
        let elsewhere = choose(&[a, b], "qwen").unwrap_err();
        assert!(!elsewhere.starts_with("endpoint_down"), "{elsewhere}");
    }

    #[test]
    fn without_a_model_a_warm_one_then_a_local_one_then_the_claude_api() {
        let cold = endpoint(EndpointKind::Ollama, "http://a", &[("m1", false)], true);
        let warm = endpoint(EndpointKind::Openai, "http://v/v1", &[("m2", true)], true);
        let claude =
            endpoint(EndpointKind::Anthropic, "https://api.anthropic.com", &[("claude-haiku-4-5", false)], true);
        assert_eq!(choose(&[cold.clone(), warm, claude.clone()], "").unwrap().model, "m2");
        assert_eq!(choose(&[claude.clone(), cold], "").unwrap().model, "m1");
        let cloud = choose(std::slice::from_ref(&claude), "").unwrap();
        assert_eq!((cloud.provider, cloud.cold), (Provider::Anthropic, false));
        // Claude models by name, advertised or not.
        assert_eq!(choose(&[claude], "claude-opus-4-1").unwrap().model, "claude-opus-4-1");
        assert!(choose(&[], "").unwrap_err().contains("no model given"));
    }
}
