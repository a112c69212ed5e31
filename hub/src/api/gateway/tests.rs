//! The gateway's pure parts: each API's request read into a `Chat`, its replies and errors
//! written in its own shapes, and text cut inside a character.

use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::*;
use crate::domain::ChatRole;

fn finish(stop: Stop) -> Finish {
    Finish {
        model: "m".into(),
        input_tokens: 7,
        output_tokens: 3,
        stop,
        duration_ms: 12,
        load_ms: Some(2),
        tool_calls: Vec::new(),
    }
}

#[test]
fn openai_requests_read_into_a_chat() {
    let body = json!({
        "model": "qwen2.5:7b",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "and kind"}]},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": [{"type": "text", "text": "more"}]},
        ],
        "max_completion_tokens": 64,
        "temperature": 0.5,
        "stop": "END",
        "response_format": {"type": "json_object"},
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let chat = openai::parse(&body).unwrap();
    assert_eq!(chat.model, "qwen2.5:7b");
    assert_eq!(chat.system, "be brief\n\nand kind");
    let roles: Vec<ChatRole> = chat.messages.iter().map(|m| m.role).collect();
    assert_eq!(roles, [ChatRole::User, ChatRole::Assistant, ChatRole::User]);
    assert_eq!(chat.messages[2].content, "more");
    assert_eq!((chat.max_tokens, chat.temperature, chat.stop.clone()), (64, Some(0.5), vec!["END".to_owned()]));
    assert!(chat.json && chat.stream && chat.usage_chunk);
}

#[test]
fn each_api_refuses_what_it_cannot_serve_naming_the_field() {
    let refused = |result: Result<Chat, Refusal>| result.unwrap_err().message;
    assert!(refused(openai::parse(&json!({"messages": [{"role": "user", "content": "hi"}]}))).contains("model"));
    let nameless =
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]});
    assert!(refused(openai::parse(&nameless)).contains("tools[0]: a tool needs a name"));
    let legacy = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "functions": [{"name": "f"}]});
    assert!(refused(openai::parse(&legacy)).contains("functions"));
    let image = json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]});
    assert!(refused(openai::parse(&image)).contains("messages[0].content: image_url parts"));
    let hot = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 3});
    assert!(refused(openai::parse(&hot)).contains("temperature"));
    let no_max = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    assert!(refused(anthropic::parse(&no_max)).contains("max_tokens"));
    let misplaced = json!({"model": "m", "max_tokens": 8, "messages": [
        {"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]});
    assert!(
        refused(anthropic::parse(&misplaced)).contains("tool_use blocks are not served by this gateway in a user turn")
    );
    let server_tool = json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search"}]});
    assert!(refused(anthropic::parse(&server_tool)).contains("server tools"));
    assert!(refused(ollama::parse_generate(&json!({"model": "m"}))).contains("prompt is required"));
    let bad_role = json!({"model": "m", "messages": [{"role": "wizard", "content": "hi"}]});
    assert!(refused(ollama::parse_chat(&bad_role)).contains("messages[0].role"));
}

#[test]
fn anthropic_and_ollama_requests_read_into_a_chat() {
    let body = json!({
        "model": "claude-sonnet-4-5", "max_tokens": 32,
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "stop_sequences": ["X"], "stream": true,
    });
    let chat = anthropic::parse(&body).unwrap();
    assert_eq!((chat.system.as_str(), chat.max_tokens, chat.stream), ("be brief", 32, true));
    assert_eq!(chat.messages[0].content, "hi");

    // Ollama streams unless told not to; `num_predict: -1` is no limit.
    let body = json!({
        "model": "llama3.2:3b",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
        "options": {"num_predict": -1, "temperature": 0.1, "stop": ["a", "b"]},
        "format": {"type": "object"}, "keep_alive": 300,
    });
    let chat = ollama::parse_chat(&body).unwrap();
    assert!(chat.stream && chat.json && !chat.generate);
    assert_eq!((chat.system.as_str(), chat.max_tokens, chat.keep_alive.as_deref()), ("s", 0, Some("300")));
    let chat = ollama::parse_generate(&json!({"model": "m", "prompt": "hi", "system": "s", "stream": false})).unwrap();
    assert!(chat.generate && !chat.stream);
    assert_eq!((chat.messages[0].role, chat.messages[0].content.as_str()), (ChatRole::User, "hi"));
}

#[test]
fn replies_are_written_in_each_apis_shape() {
    let done = finish(Stop::End);
    let whole = openai::whole("chatcmpl-1", 5, "hi".into(), &done);
    assert_eq!(whole["choices"][0]["message"], json!({"role": "assistant", "content": "hi"}));
    assert_eq!(whole["usage"], json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}));
    let end = openai::end("chatcmpl-1", 5, &finish(Stop::Length), true);
    assert_eq!(end[0]["choices"][0]["finish_reason"], "length");
    assert_eq!((end[1]["choices"].clone(), end[1]["usage"]["total_tokens"].clone()), (json!([]), json!(10)));
    assert_eq!(openai::end("c", 5, &done, false).len(), 1, "no usage chunk unless asked");

    let whole = anthropic::whole("msg_1", "hi".into(), &finish(Stop::Sequence));
    assert_eq!(whole["stop_reason"], "stop_sequence");
    assert_eq!(whole["content"], json!([{"type": "text", "text": "hi"}]));
    let names: Vec<&str> = anthropic::head("msg_1", "m")
        .into_iter()
        .chain(vec![anthropic::piece("x")])
        .chain(anthropic::end(&done))
        .map(|(name, event)| {
            assert_eq!(event["type"], name, "each event's type is its name");
            name
        })
        .collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );

    let last = ollama::end("2026-12-08T00:00:00Z", false, String::new(), &done);
    assert_eq!((last["done"].clone(), last["done_reason"].clone()), (json!(true), json!("stop")));
    assert_eq!((last["prompt_eval_count"].clone(), last["eval_count"].clone()), (json!(7), json!(3)));
    assert_eq!(last["total_duration"], 12_000_000);
    let generated = ollama::end("t", true, "hi".into(), &finish(Stop::Length));
    assert_eq!((generated["response"].clone(), generated["done_reason"].clone()), (json!("hi"), json!("length")));
}

#[test]
fn errors_come_in_each_apis_shape_and_status() {
    let refusal = Refusal { retry_after: Some(3), ..Refusal::new(Kind::RateLimited, "slow down") };
    assert_eq!(refusal.body(Dialect::OpenAi)["error"]["type"], "rate_limit_error");
    assert_eq!(refusal.body(Dialect::OpenAi)["error"]["message"], "slow down");
    assert_eq!(
        refusal.body(Dialect::Anthropic),
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
    );
    assert_eq!(refusal.body(Dialect::Ollama), json!({"error": "slow down"}));
    let response = refusal.into_response(Dialect::Ollama);
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "3");
    assert_eq!(Refusal::new(Kind::NotFound, "x").body(Dialect::OpenAi)["error"]["code"], "model_not_found");
    assert_eq!(Refusal::new(Kind::Unavailable, "x").body(Dialect::Anthropic)["error"]["type"], "overloaded_error");
}

#[test]
fn paths_and_headers_decide_the_api() {
    let plain = HeaderMap::new();
    let mut anthropic_client = HeaderMap::new();
    anthropic_client.insert("anthropic-version", "2023-06-01".parse().unwrap());
    assert_eq!(dialect_of("/v1/models", &plain), Some(Dialect::OpenAi));
    assert_eq!(dialect_of("/v1/models", &anthropic_client), Some(Dialect::Anthropic));
    assert_eq!(dialect_of("/api/tags", &plain), Some(Dialect::Ollama));
    assert_eq!(dialect_of("/api/v1/tasks", &plain), None);
    for path in crate::auth::GATEWAY_PATHS {
        assert!(dialect_of(path, &plain).is_some(), "{path} is the gateway's");
    }
    assert_eq!(
        (Stop::of("end_turn"), Stop::of("max_tokens"), Stop::of("length")),
        (Stop::End, Stop::Length, Stop::Length)
    );
}

#[test]
fn text_cut_inside_a_character_waits_for_the_rest() {
    let mut utf8 = relay::Utf8::default();
    let bytes = "héllo ✓".as_bytes();
    let mut text = String::new();
    for byte in bytes {
        text.push_str(&utf8.push(std::slice::from_ref(byte)));
    }
    assert_eq!(text, "héllo ✓");
    assert_eq!(utf8.push(&[0xff, b'a']), "\u{fffd}a", "a broken byte is replaced, not held");
}

#[test]
fn tools_and_their_turns_read_alike_from_every_api() {
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
    let function =
        json!([{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": schema}}]);
    let openai = openai::parse(&json!({
        "model": "m", "tools": function,
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
    }))
    .unwrap();
    let anthropic = anthropic::parse(&json!({
        "model": "m", "max_tokens": 8,
        "tools": [{"name": "get_weather", "description": "d", "input_schema": schema}],
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": [{"type": "text", "text": "sunny"}]}]},
        ],
    }))
    .unwrap();
    let ollama = ollama::parse_chat(&json!({
        "model": "m", "tools": function,
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        ],
    }))
    .unwrap();
    for chat in [&openai, &anthropic] {
        assert_eq!(chat.tools, ollama.tools);
        assert_eq!(chat.messages.len(), 3);
        assert_eq!(chat.messages[1].tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!((chat.messages[2].role, chat.messages[2].tool_call_id.as_str()), (ChatRole::Tool, "c1"));
    }
    // Ollama gives calls no ids: they are numbered, and its tool turns answer them in order.
    assert_eq!(ollama.messages[1].tool_calls[0].id, "call_1");
    assert_eq!((ollama.messages[2].tool_call_id.as_str(), ollama.messages[2].content.as_str()), ("call_1", "sunny"));
    let refusing = json!({"model": "m", "tools": function, "tool_choice": "none", "messages": [{"role": "user", "content": "hi"}]});
    assert!(openai::parse(&refusing).unwrap().tools.is_empty(), "tool_choice none offers no tools");
}

#[test]
fn tool_calls_are_written_in_each_apis_shape() {
    let called = Finish {
        tool_calls: vec![crate::domain::ToolCall {
            id: "c1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        }],
        ..finish(Stop::ToolUse)
    };
    let whole = openai::whole("chatcmpl-1", 5, String::new(), &called);
    assert_eq!(whole["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(whole["choices"][0]["message"]["content"], Value::Null);
    assert_eq!(whole["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], r#"{"city":"Paris"}"#);
    let end = openai::end("chatcmpl-1", 5, &called, false);
    assert_eq!(end[0]["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
    assert_eq!(end[1]["choices"][0]["finish_reason"], "tool_calls");

    let whole = anthropic::whole("msg_1", String::new(), &called);
    assert_eq!(whole["stop_reason"], "tool_use");
    assert_eq!(
        whole["content"],
        json!([{"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Paris"}}])
    );
    let events: Vec<(&str, Value)> = anthropic::end(&called);
    let names: Vec<&str> = events.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        [
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[2].1["delta"], json!({"type": "input_json_delta", "partial_json": r#"{"city":"Paris"}"#}));
    assert_eq!(events[4].1["delta"]["stop_reason"], "tool_use");

    let last = ollama::end("t", false, String::new(), &called);
    assert_eq!(
        last["message"]["tool_calls"],
        json!([{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}])
    );
    assert_eq!(last["done_reason"], "stop");
}
