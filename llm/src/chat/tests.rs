//! The stream parsers and request bodies, against recorded provider output.

use super::error::error_body;
use super::*;

/// Feeds `body` to a parser in pieces of every size, so no split point is special.
fn all_splits(body: &[u8], parse: impl Fn(&[&[u8]]) -> Result<Vec<Delta>, Error>) -> Result<Vec<Delta>, Error> {
    let whole = parse(&[body])?;
    for size in 1..body.len().min(64) {
        let pieces: Vec<&[u8]> = body.chunks(size).collect();
        assert_eq!(parse(&pieces)?, whole, "split into pieces of {size}");
    }
    Ok(whole)
}

fn ollama(pieces: &[&[u8]]) -> Result<Vec<Delta>, Error> {
    let mut stream = OllamaStream::default();
    let mut out = Vec::new();
    for piece in pieces {
        out.extend(stream.feed(piece)?);
    }
    out.extend(stream.finish()?);
    Ok(out)
}

fn anthropic(pieces: &[&[u8]]) -> Result<Vec<Delta>, Error> {
    let mut stream = AnthropicStream::default();
    let mut out = Vec::new();
    for piece in pieces {
        out.extend(stream.feed(piece)?);
    }
    out.extend(stream.finish()?);
    Ok(out)
}

fn openai(pieces: &[&[u8]]) -> Result<Vec<Delta>, Error> {
    let mut stream = OpenAiStream::default();
    let mut out = Vec::new();
    for piece in pieces {
        out.extend(stream.feed(piece)?);
    }
    out.extend(stream.finish()?);
    Ok(out)
}

fn text(deltas: &[Delta]) -> String {
    deltas.iter().filter_map(|d| if let Delta::Text(t) = d { Some(t.as_str()) } else { None }).collect()
}

fn counts(deltas: &[Delta]) -> Counts {
    match deltas.last() {
        Some(Delta::Done(counts)) => counts.clone(),
        other => panic!("no final counts: {other:?}"),
    }
}

const OLLAMA: &str = concat!(
    r#"{"model":"llama3.2:3b","created_at":"2025-10-02T10:00:00.1Z","message":{"role":"assistant","content":"Hel"},"done":false}"#,
    "\n",
    r#"{"model":"llama3.2:3b","created_at":"2025-10-02T10:00:00.2Z","message":{"role":"assistant","content":"lo ✓"},"done":false}"#,
    "\n",
    r#"{"model":"llama3.2:3b","created_at":"2025-10-02T10:00:00.3Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":1200000000,"load_duration":900000000,"prompt_eval_count":26,"prompt_eval_duration":50000000,"eval_count":2,"eval_duration":100000000}"#,
    "\n",
);

#[test]
fn an_ollama_stream_gives_its_text_and_timings() {
    let deltas = all_splits(OLLAMA.as_bytes(), ollama).unwrap();
    assert_eq!(text(&deltas), "Hello ✓");
    let counts = counts(&deltas);
    assert_eq!((counts.input_tokens, counts.output_tokens), (26, 2));
    assert_eq!((counts.load_ns, counts.eval_ns), (Some(900_000_000), Some(100_000_000)));
    assert_eq!((counts.model.as_str(), counts.stop_reason.as_str()), ("llama3.2:3b", "stop"));
}

#[test]
fn an_ollama_error_after_200_fails_with_its_message_and_a_cut_stream_is_an_error() {
    let body = concat!(
        r#"{"model":"m","message":{"role":"assistant","content":"par"},"done":false}"#,
        "\n",
        r#"{"error":"an error was encountered while running the model: unexpected EOF"}"#,
        "\n"
    );
    let err = ollama(&[body.as_bytes()]).unwrap_err();
    assert_eq!(err.to_string(), "ollama: an error was encountered while running the model: unexpected EOF");
    let cut = &OLLAMA.as_bytes()[..OLLAMA.len() / 2];
    assert!(matches!(ollama(&[cut]), Err(Error::Truncated(_))), "no done: true");
    // Missing timings count as 0, and a last line without a newline still counts.
    let bare = r#"{"model":"m","message":{"role":"assistant","content":"x"},"done":true}"#;
    let deltas = ollama(&[bare.as_bytes()]).unwrap();
    assert_eq!((text(&deltas).as_str(), counts(&deltas).output_tokens), ("x", 0));
}

const ANTHROPIC: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":10,\"output_tokens\":1}}}\n\
\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\
\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\
\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\
\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"!\"}}\n\
\n\
event: some_future_event\n\
data: {\"type\":\"some_future_event\"}\n\
\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\
\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\
\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\
\n";

#[test]
fn an_anthropic_stream_gives_its_text_and_cumulative_usage() {
    let deltas = all_splits(ANTHROPIC.as_bytes(), anthropic).unwrap();
    assert_eq!(text(&deltas), "Hello!");
    let counts = counts(&deltas);
    assert_eq!((counts.input_tokens, counts.cached_input_tokens, counts.output_tokens), (25, 10, 15));
    assert_eq!((counts.model.as_str(), counts.stop_reason.as_str()), ("claude-sonnet-4-5", "end_turn"));
}

#[test]
fn an_anthropic_error_event_after_200_fails_with_its_type() {
    let body = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":3}}}\n\n\
event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let err = anthropic(&[body.as_bytes()]).unwrap_err();
    assert!(matches!(&err, Error::Provider { kind, .. } if kind == "overloaded_error"), "{err:?}");
    assert!(err.is_transient());
    assert_eq!(err.to_string(), "anthropic: Overloaded");
}

const OPENAI: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"qwen2.5:7b\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"qwen2.5:7b\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"qwen2.5:7b\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there\"},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"qwen2.5:7b\",\"choices\":null,\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":2,\"total_tokens\":14,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\n\
data: [DONE]\n\n";

#[test]
fn an_openai_stream_gives_its_text_and_usage_with_choices_null() {
    let deltas = all_splits(OPENAI.as_bytes(), openai).unwrap();
    assert_eq!(text(&deltas), "Hi there");
    let counts = counts(&deltas);
    assert_eq!((counts.input_tokens, counts.cached_input_tokens, counts.output_tokens), (8, 4, 2));
    assert_eq!((counts.model.as_str(), counts.stop_reason.as_str()), ("qwen2.5:7b", "stop"));
    assert!(matches!(openai(&[b"data: {\"choices\":[]}\n\n"]), Err(Error::Truncated(_))), "no [DONE]");
}

/// llama.cpp's server (llama-cpp-python, default settings) when a second request interrupts a
/// generation: the chunks so far, then `[DONE]`, and no chunk ever had a `finish_reason`.
const LLAMA_CPP_INTERRUPTED: &str = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gemma\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\"logprobs\":null,\"finish_reason\":null}]}\r\n\r\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gemma\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Once\"},\"logprobs\":null,\"finish_reason\":null}]}\r\n\r\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gemma\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" upon\"},\"logprobs\":null,\"finish_reason\":null}]}\r\n\r\n\
data: [DONE]\r\n\r\n";

#[test]
fn a_reply_without_its_end_marker_is_truncated_never_whole() {
    let err = all_splits(LLAMA_CPP_INTERRUPTED.as_bytes(), openai).unwrap_err();
    assert!(matches!(err, Error::Truncated(_)), "{err:?}");
    assert_eq!(err.reason(), Some(FailureReason::Truncated));
    assert!(err.describe().starts_with("truncated: openai: [DONE] came without a finish_reason"), "{}", err.describe());
    // The same stream with its finish_reason is whole, [DONE] or not.
    let whole = LLAMA_CPP_INTERRUPTED.replace(
        "\" upon\"},\"logprobs\":null,\"finish_reason\":null",
        "\" upon\"},\"logprobs\":null,\"finish_reason\":\"length\"",
    );
    let deltas = openai(&[whole.as_bytes()]).unwrap();
    assert_eq!((text(&deltas).as_str(), counts(&deltas).stop_reason.as_str()), ("Once upon", "length"));
    let no_done = whole.replace("data: [DONE]\r\n\r\n", "");
    assert_eq!(counts(&openai(&[no_done.as_bytes()]).unwrap()).stop_reason, "length");
    // Anthropic: message_stop without a stop_reason, or no message_stop at all.
    let no_reason = ANTHROPIC.replace("\"stop_reason\":\"end_turn\",", "");
    assert!(matches!(anthropic(&[no_reason.as_bytes()]), Err(Error::Truncated(_))));
    let cut = &ANTHROPIC[..ANTHROPIC.find("event: message_stop").unwrap()];
    assert!(matches!(anthropic(&[cut.as_bytes()]), Err(Error::Truncated(_))));
}

#[test]
fn errors_carry_the_reason_an_attempt_records() {
    let provider = |status: u16, kind: &str, message: &str| Error::Provider {
        provider: "openai",
        status: Some(status),
        kind: kind.into(),
        message: message.into(),
        retry_after: None,
    };
    let llama = provider(400, "", "Requested tokens (2100) exceed context window of 2048");
    assert_eq!((llama.reason(), llama.context_window()), (Some(FailureReason::ContextLengthExceeded), Some(2048)));
    let openai = provider(
        400,
        "invalid_request_error",
        "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens",
    );
    assert_eq!((openai.reason(), openai.context_window()), (Some(FailureReason::ContextLengthExceeded), Some(8192)));
    let code = provider(400, "context_length_exceeded", "too long");
    assert_eq!((code.reason(), code.context_window()), (Some(FailureReason::ContextLengthExceeded), None));
    let tools = provider(400, "", "registry.ollama.ai/library/gemma:2b does not support tools");
    assert_eq!(tools.reason(), Some(FailureReason::ToolsUnsupported));
    assert!(tools.describe().starts_with("tools_unsupported: openai: "), "{}", tools.describe());
    assert_eq!(
        provider(500, "", "does not support tools").reason(),
        None,
        "a 5xx is the server's fault, not a refusal"
    );
    assert_eq!(provider(429, "rate_limit_error", "slow down").reason(), None);
    assert_eq!(provider(429, "rate_limit_error", "slow down").describe(), "openai: slow down");
    assert_eq!(Error::Transport("openai: connection refused".into()).reason(), Some(FailureReason::EndpointDown));
    assert_eq!(Error::StreamBroken("x".into()).describe(), "stream_broken: x");
}

#[test]
fn request_bodies_follow_each_providers_api() {
    let request = Request {
        model: "m".into(),
        system: "be brief".into(),
        messages: vec![Message { role: "user".into(), content: "hi".into() }],
        max_tokens: 0,
        temperature: Some(0.5),
        stop: vec!["\n\n".into()],
        json: true,
        keep_alive: Some("10m".into()),
    };
    let ollama = request.body(Provider::Ollama);
    assert_eq!(ollama["messages"][0], json!({"role": "system", "content": "be brief"}));
    assert_eq!((ollama["format"].as_str(), ollama["keep_alive"].as_str()), (Some("json"), Some("10m")));
    assert_eq!(ollama["options"]["stop"], json!(["\n\n"]));
    assert!(ollama["options"].get("num_predict").is_none());
    let anthropic = request.body(Provider::Anthropic);
    assert_eq!((anthropic["system"].as_str(), anthropic["max_tokens"].as_u64()), (Some("be brief"), Some(1024)));
    assert_eq!(anthropic["messages"].as_array().unwrap().len(), 1, "the system prompt is not a message");
    assert_eq!(anthropic["stop_sequences"], json!(["\n\n"]));
    let openai = request.body(Provider::OpenAi);
    assert_eq!(openai["stream_options"], json!({"include_usage": true}));
    assert_eq!(openai["response_format"], json!({"type": "json_object"}));
}

#[test]
fn error_bodies_of_every_provider_are_read() {
    assert_eq!(error_body(br#"{"error":"model 'x' not found"}"#), (String::new(), "model 'x' not found".into()));
    let anthropic = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
    assert_eq!(error_body(anthropic), ("rate_limit_error".into(), "slow down".into()));
    assert_eq!(error_body(b"<html>bad gateway</html>").1, "<html>bad gateway</html>");
}
