//! One gateway request, from its [`Chat`] to the caller's last byte: the key's limits checked,
//! the model resolved against the fleet (an alias's models, the fallback's), the task submitted
//! in the `interactive` lane, its placement awaited (the answer's `x-agentcom-task` and
//! `x-agentcom-placement` headers), then its reply relayed from the task's feed as it arrives,
//! rendered in the caller's API.
//!
//! A stream goes through a bounded buffer ([`BUFFERED`] pieces): a caller that stops reading for
//! [`SLOW_CALLER`] is cut off, and a caller that goes away drops the buffer's far end; either way
//! the task is cancelled, which stops the request on the sidecar and closes its connection to the
//! endpoint. A failed attempt that had streamed nothing is retried by the hub as any LLM task
//! (on the next placement), and a task that failed so, having sent nothing, is followed by one
//! for the next candidate model; once text has reached the caller, a retry cannot be joined to
//! it, so the stream ends with an error instead.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{Chat, Dialect, Finish, Kind, Refusal, Stop, anthropic, keys, models, ollama, openai};
use crate::api::http::HttpState;
use crate::auth::{Caller, KeyLimits};
use crate::core::{Error, Handle};
use crate::domain::{Lane, LlmWork, SpecDefaults, Task, TaskId, TaskSpec, TaskState, Work};
use crate::feed::{self, FeedEvent};

/// Pieces a stream holds for a caller that reads slower than the model writes.
pub(super) const BUFFERED: usize = 256;
/// How long a stream waits for a caller that has stopped reading before cutting it off.
pub(super) const SLOW_CALLER: Duration = Duration::from_secs(30);

/// The task a gateway request makes of `chat`.
pub(super) fn spec(
    defaults: &SpecDefaults,
    dialect: Dialect,
    caller: Option<&Caller>,
    limits: &KeyLimits,
    chat: &Chat,
) -> TaskSpec {
    let mut spec = TaskSpec::shell(Vec::new(), defaults);
    spec.name = format!("{} {}", dialect.as_str(), chat.model);
    spec.priority = Lane::Interactive;
    spec.work = Work::Llm(LlmWork {
        system: chat.system.clone(),
        messages: chat.messages.clone(),
        model: chat.model.clone(),
        max_tokens: chat.max_tokens,
        temperature: chat.temperature,
        stop: chat.stop.clone(),
        json: chat.json,
        keep_alive: chat.keep_alive.clone(),
        redact: !limits.store,
        tools: chat.tools.clone(),
        ..LlmWork::prompt("")
    });
    spec.placement.model = chat.model.clone();
    spec.placement.local_only = limits.local_only;
    spec.trace_parent = chat.trace_parent;
    spec.labels.insert("gateway".into(), dialect.as_str().into());
    if let Some(caller) = caller {
        spec.labels.insert(crate::core::GATEWAY_KEY.into(), caller.token_id.clone());
    }
    // A person is waiting: an endpoint that failed before the first token is retried at once.
    spec.retry.backoff_base_ms = 50;
    spec.retry.backoff_max_ms = 500;
    spec
}

fn refusal_of(err: Error) -> Refusal {
    match err {
        Error::Invalid(err) => Refusal::invalid(err.to_string()),
        err @ (Error::Overloaded | Error::ShuttingDown | Error::StorageFault(_) | Error::NoRoom(_)) => {
            Refusal { retry_after: Some(1), ..Refusal::new(Kind::Unavailable, err.to_string()) }
        }
        err => Refusal::new(Kind::Internal, err.to_string()),
    }
}

/// Cancels the task when dropped before it ended: the caller went away, or was cut off.
struct Guard {
    hub: Handle,
    id: TaskId,
    ended: bool,
    reason: &'static str,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let (hub, id, reason) = (self.hub.clone(), self.id, self.reason);
        tokio::spawn(async move {
            let _ = hub.cancel(id, reason.to_owned()).await;
        });
    }
}

/// How the caller's API writes the reply.
struct Render {
    dialect: Dialect,
    id: String,
    created: u64,
    created_at: String,
    model: String,
    generate: bool,
    usage_chunk: bool,
}

impl Render {
    fn new(dialect: Dialect, task: TaskId, chat: &Chat) -> Render {
        let id = match dialect {
            Dialect::OpenAi => format!("chatcmpl-{task}"),
            Dialect::Anthropic => format!("msg_{task}"),
            Dialect::Ollama => task.to_string(),
        };
        Render {
            dialect,
            id,
            created: super::unix_seconds(),
            created_at: ollama::created_at(crate::domain::now_ms()),
            model: chat.model.clone(),
            generate: chat.generate,
            usage_chunk: chat.usage_chunk,
        }
    }

    fn content_type(&self) -> &'static str {
        match self.dialect {
            Dialect::Ollama => "application/x-ndjson",
            Dialect::OpenAi | Dialect::Anthropic => "text/event-stream",
        }
    }

    fn head(&self) -> Vec<u8> {
        match self.dialect {
            Dialect::OpenAi => data(&openai::head(&self.id, self.created, &self.model)),
            Dialect::Anthropic => {
                anthropic::head(&self.id, &self.model).iter().flat_map(|(n, v)| event(n, v)).collect()
            }
            Dialect::Ollama => Vec::new(),
        }
    }

    fn piece(&self, text: &str) -> Vec<u8> {
        match self.dialect {
            Dialect::OpenAi => data(&openai::piece(&self.id, self.created, &self.model, text)),
            Dialect::Anthropic => {
                let (name, value) = anthropic::piece(text);
                event(name, &value)
            }
            Dialect::Ollama => line(&ollama::piece(&self.model, &self.created_at, self.generate, text)),
        }
    }

    fn end(&self, finish: &Finish) -> Vec<u8> {
        match self.dialect {
            Dialect::OpenAi => {
                let mut bytes: Vec<u8> =
                    openai::end(&self.id, self.created, finish, self.usage_chunk).iter().flat_map(data).collect();
                bytes.extend_from_slice(b"data: [DONE]\n\n");
                bytes
            }
            Dialect::Anthropic => anthropic::end(finish).iter().flat_map(|(n, v)| event(n, v)).collect(),
            Dialect::Ollama => line(&ollama::end(&self.created_at, self.generate, String::new(), finish)),
        }
    }

    /// An error after the stream began, in the stream's own form.
    fn error(&self, refusal: &Refusal) -> Vec<u8> {
        let body = refusal.body(self.dialect);
        match self.dialect {
            Dialect::OpenAi => data(&body),
            Dialect::Anthropic => event("error", &body),
            Dialect::Ollama => line(&body),
        }
    }

    fn whole(&self, text: String, finish: &Finish) -> Value {
        match self.dialect {
            Dialect::OpenAi => openai::whole(&self.id, self.created, text, finish),
            Dialect::Anthropic => anthropic::whole(&self.id, text, finish),
            Dialect::Ollama => ollama::end(&self.created_at, self.generate, text, finish),
        }
    }
}

fn data(value: &Value) -> Vec<u8> {
    format!("data: {value}\n\n").into_bytes()
}

fn event(name: &str, value: &Value) -> Vec<u8> {
    format!("event: {name}\ndata: {value}\n\n").into_bytes()
}

fn line(value: &Value) -> Vec<u8> {
    format!("{value}\n").into_bytes()
}

/// How a task that ended reads to the caller: its finish, or why it failed.
fn ending(task: &Task, model: &str) -> Result<Finish, Refusal> {
    let outcome = task.outcome.as_ref();
    if task.state == TaskState::Succeeded {
        let usage = outcome.and_then(|o| o.usage.as_ref());
        return Ok(Finish {
            model: usage.map(|u| u.model.clone()).filter(|m| !m.is_empty()).unwrap_or_else(|| model.to_owned()),
            input_tokens: usage.map_or(0, |u| u.input_tokens + u.cached_input_tokens),
            output_tokens: usage.map_or(0, |u| u.output_tokens),
            stop: usage.map_or(Stop::End, |u| Stop::of(&u.stop_reason)),
            duration_ms: outcome.map_or(0, |o| o.duration_ms),
            load_ms: usage.and_then(|u| u.load_ms),
            tool_calls: outcome.map(|o| o.tool_calls.clone()).unwrap_or_default(),
        });
    }
    let why =
        outcome.and_then(|o| o.error.clone()).filter(|e| !e.is_empty()).unwrap_or_else(|| task.state_reason.clone());
    let kind = if outcome.is_some_and(|o| o.timed_out) { Kind::Timeout } else { Kind::Upstream };
    Err(Refusal::new(kind, format!("the request {}: {why} (task {})", task.state.as_str(), task.id)))
}

/// Text of the reply so far, whole characters only: a piece may end inside one.
#[derive(Default)]
pub(super) struct Utf8 {
    pending: Vec<u8>,
}

impl Utf8 {
    pub(super) fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An incomplete character at the end waits for the rest; a broken one is replaced.
            Err(err) if err.error_len().is_none() => err.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let text = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
        self.pending.drain(..valid);
        text
    }
}

/// What the relay makes of one feed event.
enum Step {
    Text(String),
    Ended(Result<Finish, Refusal>),
    Nothing,
}

/// Reads the feed: the reply's text of one attempt, then its end.
struct Reading {
    utf8: Utf8,
    /// The attempt whose text the caller has.
    attempt: Option<u32>,
    model: String,
    /// The task has ended (nothing is left to cancel).
    task_ended: bool,
}

impl Reading {
    fn step(&mut self, event: FeedEvent) -> Step {
        match event {
            FeedEvent::Output { attempt, stream: crate::domain::Stream::Stdout, data, .. } => {
                if self.attempt.is_some_and(|sent| sent != attempt) {
                    return Step::Ended(Err(Refusal::new(
                        Kind::Upstream,
                        "the endpoint failed mid-reply, and its retry cannot be joined to the text already sent",
                    )));
                }
                self.attempt = Some(attempt);
                Step::Text(self.utf8.push(&data))
            }
            FeedEvent::Snapshot(task) if task.state.is_terminal() => {
                self.task_ended = true;
                Step::Ended(ending(&task, &self.model))
            }
            FeedEvent::Failed(why) => Step::Ended(Err(Refusal::new(Kind::Unavailable, why))),
            FeedEvent::Output { .. } | FeedEvent::Snapshot(_) | FeedEvent::Step { .. } => Step::Nothing,
        }
    }
}

pub(super) async fn run(state: HttpState, dialect: Dialect, caller: Option<Caller>, chat: Chat) -> Response {
    match start(&state, dialect, caller, chat).await {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(dialect),
    }
}

/// One task of a request, placed (or ended): its feed from the start, and its guard.
struct Launched {
    id: TaskId,
    guard: Guard,
    events: std::pin::Pin<Box<dyn futures_util::Stream<Item = FeedEvent> + Send>>,
    /// Where it was placed, for `x-agentcom-placement`.
    sidecar: String,
}

/// What a request needs to launch its tasks: the first candidate model, and the next ones when
/// an endpoint fails before its first token.
struct Request {
    state: HttpState,
    dialect: Dialect,
    caller: Option<Caller>,
    limits: KeyLimits,
    chat: Chat,
    /// The models still to try, in order.
    candidates: VecDeque<String>,
}

impl Request {
    /// Submits the next candidate's task and waits until it is placed (or has ended).
    async fn launch(&mut self) -> Result<Launched, Refusal> {
        let model = self.candidates.pop_front().ok_or_else(|| Refusal::new(Kind::Upstream, "no model left to try"))?;
        let chat = Chat { model, ..self.chat.clone() };
        let spec = spec(&self.state.spec_defaults, self.dialect, self.caller.as_ref(), &self.limits, &chat);
        spec.validate().map_err(|err| Refusal::invalid(err.to_string()))?;
        let id = self.state.hub.submit(spec).await.map_err(refusal_of)?.task.id;
        let guard = Guard { hub: self.state.hub.clone(), id, ended: false, reason: "the caller went away" };
        let feed = self.state.hub.watch(id).await.map_err(refusal_of)?;
        let mut events = Box::pin(feed::events(feed, self.state.stop.clone()));
        let mut early = Vec::new();
        let sidecar = loop {
            match events.next().await {
                None => return Err(Refusal::new(Kind::Unavailable, "the hub is stopping")),
                Some(FeedEvent::Snapshot(task)) if task.state.is_terminal() || task.sidecar_id.is_some() => {
                    let sidecar = task.sidecar_id.clone().unwrap_or_default();
                    early.push(FeedEvent::Snapshot(task));
                    break sidecar;
                }
                Some(other) => early.push(other),
            }
        };
        let events = Box::pin(futures_util::stream::iter(early).chain(events));
        Ok(Launched { id, guard, events, sidecar })
    }

    /// Reads `launched` to its end; an endpoint that failed before the first token (nothing of
    /// it sent) is tried again on the next candidate, as long as there is one. `text` gets each
    /// piece; false from it stops the reading (the caller is gone).
    async fn read(
        &mut self,
        mut launched: Launched,
        reading: &mut Reading,
        mut out: Out<'_>,
    ) -> Option<Result<Finish, Refusal>> {
        loop {
            let Some(event) = launched.events.next().await else {
                return Some(Err(Refusal::new(Kind::Unavailable, "the hub is stopping")));
            };
            match reading.step(event) {
                Step::Text(piece) if piece.is_empty() => {}
                Step::Text(piece) => {
                    if !out.text(piece).await {
                        launched.guard.reason = "the caller stopped reading or went away";
                        return None;
                    }
                }
                Step::Ended(Err(refusal))
                    if refusal.kind == Kind::Upstream && reading.attempt.is_none() && !self.candidates.is_empty() =>
                {
                    launched.guard.ended = reading.task_ended;
                    reading.task_ended = false;
                    launched = match self.launch().await {
                        Ok(next) => next,
                        Err(refusal) => return Some(Err(refusal)),
                    };
                }
                Step::Ended(ended) => {
                    // A retry that cannot be joined still runs: the guard cancels it.
                    launched.guard.ended = reading.task_ended;
                    return Some(ended);
                }
                Step::Nothing => {}
            }
        }
    }
}

/// Where the reply's text goes: gathered for a whole answer, or sent down the stream.
enum Out<'a> {
    Whole(&'a mut String),
    Stream(&'a mpsc::Sender<Result<Bytes, Infallible>>, &'a Render),
}

impl Out<'_> {
    /// False once the caller is gone (or has stopped reading).
    async fn text(&mut self, piece: String) -> bool {
        match self {
            Out::Whole(text) => {
                text.push_str(&piece);
                true
            }
            Out::Stream(tx, render) => send(tx, render.piece(&piece)).await,
        }
    }
}

/// Sends bytes down a stream: false once the caller went away, or stopped reading for
/// [`SLOW_CALLER`].
async fn send(tx: &mpsc::Sender<Result<Bytes, Infallible>>, bytes: Vec<u8>) -> bool {
    matches!(tokio::time::timeout(SLOW_CALLER, tx.send(Ok(Bytes::from(bytes)))).await, Ok(Ok(())))
}

async fn start(state: &HttpState, dialect: Dialect, caller: Option<Caller>, chat: Chat) -> Result<Response, Refusal> {
    // The key's limits first: what it may not do is refused whatever the fleet has.
    let key = caller.as_ref().map(|c| c.token_id.clone()).unwrap_or_default();
    let limits = state.tokens.find(&key).map(|(_, info)| info.limits).unwrap_or_default();
    keys::check_model(&limits, &chat.model)?;
    let endpoints = models::healthy(state).await?;
    // An alias's models (or the model itself, or the fallback's) that the fleet serves.
    let mut candidates = state.aliases.candidates(&chat.model, |m| models::served(&endpoints, m));
    if candidates.is_empty() {
        return Err(models::not_served(&endpoints, &chat.model));
    }
    if limits.local_only {
        candidates.retain(|m| models::served_locally(&endpoints, m));
        if candidates.is_empty() {
            return Err(Refusal::new(
                Kind::Forbidden,
                format!("this key is local-only, and model {:?} is served only by cloud providers", chat.model),
            ));
        }
    }
    if limits.daily_budget_usd.is_some() || limits.monthly_budget_usd.is_some() {
        let now = crate::domain::now_ms();
        let spent = state.hub.spent(key.clone(), crate::usage::day_of(now)).await.map_err(refusal_of)?;
        keys::check_budget(&limits, spent, now)?;
    }
    state.meters.admit(&key, &limits, Instant::now())?;
    let stream = chat.stream;
    let mut request = Request { state: state.clone(), dialect, caller, limits, chat, candidates: candidates.into() };
    let launched = request.launch().await?;
    let render = Render::new(dialect, launched.id, &request.chat);
    let mut reading =
        Reading { utf8: Utf8::default(), attempt: None, model: request.chat.model.clone(), task_ended: false };
    let placement = placement(&state.hub, launched.id, launched.sidecar.clone()).await;
    let mut headers = vec![(header::HeaderName::from_static("x-agentcom-task"), launched.id.to_string())];
    headers.push((header::HeaderName::from_static("x-agentcom-placement"), placement));

    if !stream {
        let mut whole = String::new();
        let ended = request.read(launched, &mut reading, Out::Whole(&mut whole));
        let ended = ended.await.unwrap_or_else(|| Err(Refusal::new(Kind::Internal, "the reading stopped")));
        if let Ok(finish) = &ended {
            state.meters.used(&key, finish.input_tokens + finish.output_tokens, Instant::now());
        }
        let mut response = match ended {
            Ok(finish) => axum::Json(render.whole(whole, &finish)).into_response(),
            Err(refusal) => refusal.into_response(dialect),
        };
        with_headers(&mut response, headers);
        return Ok(response);
    }

    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(BUFFERED);
    let meters = state.meters.clone();
    let content_type = render.content_type();
    tokio::spawn(async move {
        if !send(&tx, render.head()).await {
            drop(launched); // Its guard cancels the task.
            return;
        }
        let ended = request.read(launched, &mut reading, Out::Stream(&tx, &render)).await;
        let Some(ended) = ended else { return };
        let bytes = match &ended {
            Ok(finish) => {
                meters.used(&key, finish.input_tokens + finish.output_tokens, Instant::now());
                render.end(finish)
            }
            Err(refusal) => render.error(refusal),
        };
        let _ = send(&tx, bytes).await;
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut response = Response::new(body);
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_headers(&mut response, headers);
    Ok(response)
}

fn with_headers(response: &mut Response, headers: Vec<(header::HeaderName, String)>) {
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
}

/// `SIDECAR/ENDPOINT` the task was placed on (as `hubctl explain` shows it), or the sidecar
/// alone when the decision names no endpoint.
async fn placement(hub: &Handle, id: TaskId, sidecar: String) -> String {
    let decisions = hub.explain(id).await.unwrap_or_default();
    let chosen =
        decisions.iter().rev().filter(|d| d.kind == crate::core::RecordedKind::Placed).find_map(|d| {
            d.explanation.candidates.first().filter(|c| c.verdict == crate::sched::Verdict::Chosen).cloned()
        });
    match chosen {
        Some(c) => format!("{}/{}", c.sidecar_id, c.endpoint_id.unwrap_or_default()),
        None => sidecar,
    }
}
