//! Traces end to end: a real hub and a real sidecar export to an OTLP receiver written for the
//! test, and a task's spans, the hub's and the sidecar's, share one trace: the submitter's when
//! the submit carried a `traceparent`, the task's own (its id) otherwise.

use std::time::Duration;

use agentcom_integration::ollama::{FakeModel, OllamaDouble};
use agentcom_integration::otlp::{OtlpReceiver, Received};
use agentcom_integration::{HubProcess, SidecarProcess, assert_eventually};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(30);
const MODEL: &str = "llama3.2:3b";
/// The batch processor's interval: the spans arrive within it.
const EXPORT_EVERY: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "100");

fn named<'a>(spans: &'a [Received], service: &str, name: &str) -> &'a Received {
    spans
        .iter()
        .find(|s| s.service == service && s.name == name)
        .unwrap_or_else(|| panic!("no {service} span {name:?} in {:#?}", names(spans)))
}

fn names(spans: &[Received]) -> Vec<String> {
    spans.iter().map(|s| format!("{}: {} ({} <- {})", s.service, s.name, s.span_id, s.parent_span_id)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasks_trace_holds_hub_and_sidecar_spans_with_genai_attributes() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let double = OllamaDouble::start(vec![FakeModel::new(MODEL, 2_019_393_189, "llama", "3.2B")]).await;
    double.load(MODEL, 2_950_000_000);
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let otlp = receiver.endpoint();
    let hub = HubProcess::serve_with_env(&dir.path().join("hub"), &["--otlp-endpoint", &otlp], &[EXPORT_EVERY]).await;
    let flags = ["--ollama", double.url.as_str(), "--llm-check-interval-ms", "200", "--otlp-endpoint", &otlp];
    let _sidecar = SidecarProcess::start_with_env(&hub, "traced", 1, &work, &flags, &[EXPORT_EVERY]);
    assert_eventually!(hub.api.agents().await.len() == 1, PATIENCE, "the sidecar joined");
    assert_eventually!(
        hub.api.request(reqwest::Method::GET, "/api/v1/endpoints", None).await.1["endpoints"][0]["healthy"] == true,
        PATIENCE,
        "the sidecar's Ollama is up"
    );

    // An LLM task submitted inside a caller's trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = agentcom_integration::http_client()
        .post(format!("{}/api/v1/tasks", hub.url))
        .bearer_auth(&hub.api.token)
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&json!({ "llm": { "prompt": "say hello", "model": MODEL, "max_tokens": 16 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let task: Value = response.json().await.unwrap();
    let id = task["task"]["id"].as_str().unwrap().to_owned();
    let done = hub.api.wait_final(&id, PATIENCE).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["trace_id"], caller_trace, "the task says which trace it is in: {done}");

    let in_trace =
        |spans: Vec<Received>| -> Vec<Received> { spans.into_iter().filter(|s| s.trace_id == caller_trace).collect() };
    assert_eventually!(
        {
            let spans = in_trace(receiver.spans());
            ["task llm", "execute", &format!("chat {MODEL}")].iter().all(|n| spans.iter().any(|s| &s.name == n))
        },
        PATIENCE,
        "the task's spans arrived"
    );
    let spans = in_trace(receiver.spans());
    let root = named(&spans, "agentcom-hub", "task llm");
    assert_eq!(root.parent_span_id, caller_span, "the task's root hangs under the caller's span");
    assert_eq!(root.attributes["agentcom.task.id"], id);
    assert_eq!(root.attributes["agentcom.task.state"], "succeeded");
    for name in ["submit", "queue wait", "place", "dispatch"] {
        let span = named(&spans, "agentcom-hub", name);
        assert_eq!(span.parent_span_id, root.span_id, "{name} is the root's child");
        assert!(span.start_unix_nano >= root.start_unix_nano && span.end_unix_nano <= root.end_unix_nano + 1_000_000);
    }
    let place = named(&spans, "agentcom-hub", "place");
    assert!(place.attributes["agentcom.placement.reason"].contains(MODEL), "{place:?}");
    assert_eq!(place.attributes["agentcom.sidecar.id"], "traced");

    let dispatch = named(&spans, "agentcom-hub", "dispatch");
    let execute = named(&spans, "agentcom-sidecar", "execute");
    assert_eq!(execute.parent_span_id, dispatch.span_id, "the sidecar's span hangs under the dispatch");
    assert_eq!(execute.attributes["agentcom.task.id"], id);
    assert_eq!(execute.attributes["process.exit.code"], "0");
    let chat = named(&spans, "agentcom-sidecar", &format!("chat {MODEL}"));
    assert_eq!(chat.parent_span_id, execute.span_id);
    assert_eq!(chat.kind, 3, "an LLM call is a client span");
    let attributes = &chat.attributes;
    assert_eq!(attributes["gen_ai.operation.name"], "chat");
    assert_eq!(attributes["gen_ai.provider.name"], "ollama");
    assert_eq!(attributes["gen_ai.request.model"], MODEL);
    assert_eq!(attributes["gen_ai.response.model"], MODEL);
    assert_eq!(attributes["gen_ai.usage.input_tokens"], "26", "the double's prompt_eval_count");
    assert_eq!(attributes["gen_ai.usage.output_tokens"], "3", "the double's eval_count");

    // A task without a caller's trace is a trace of its own: its id.
    let shell = hub.api.submit(json!({ "shell": { "argv": ["sh", "-c", "exit 4"] } })).await;
    let shell_id = shell["id"].as_str().unwrap().to_owned();
    let done = hub.api.wait_final(&shell_id, PATIENCE).await;
    let trace_id = done["trace_id"].as_str().unwrap().to_owned();
    assert_eq!(trace_id.len(), 32);
    assert_eventually!(
        receiver.spans().iter().filter(|s| s.trace_id == trace_id).map(|s| s.name.as_str()).any(|n| n == "execute")
            && receiver.spans().iter().any(|s| s.trace_id == trace_id && s.name == "task shell"),
        PATIENCE,
        "the shell task's spans arrived"
    );
    let spans: Vec<Received> = receiver.spans().into_iter().filter(|s| s.trace_id == trace_id).collect();
    let root = named(&spans, "agentcom-hub", "task shell");
    assert!(root.parent_span_id.is_empty(), "a root of its own");
    assert_eq!(root.status.0, 2, "a failed task's root is an error: {root:?}");
    assert_eq!(named(&spans, "agentcom-sidecar", "execute").status.0, 2);
}
