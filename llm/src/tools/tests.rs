use serde_json::json;

use super::*;

fn conversation() -> Conversation {
    Conversation {
        model: "m".into(),
        system: "be brief".into(),
        entries: vec![
            Entry::User("fix it".into()),
            Entry::Assistant {
                text: "Reading.".into(),
                calls: vec![Call {
                    id: "toolu_01".into(),
                    name: "read_file".into(),
                    arguments: json!({"path": "a.txt"}),
                }],
            },
            Entry::Answers(vec![Answer {
                call_id: "toolu_01".into(),
                name: "read_file".into(),
                content: "41".into(),
                is_error: false,
            }]),
        ],
        tools: vec![Tool {
            name: "read_file".into(),
            description: "Read a file.".into(),
            parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
        }],
        max_tokens: 0,
    }
}

#[test]
fn an_anthropic_request_carries_tool_use_and_tool_result_blocks() {
    let body = conversation().body(Provider::Anthropic);
    assert_eq!(body["system"], "be brief");
    assert_eq!(body["max_tokens"], ANTHROPIC_DEFAULT_MAX_TOKENS);
    assert_eq!(body["tools"][0]["input_schema"]["required"][0], "path");
    assert!(body.get("stream").is_none());
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "no system message in the list");
    assert_eq!(
        messages[1]["content"],
        json!([
            {"type": "text", "text": "Reading."},
            {"type": "tool_use", "id": "toolu_01", "name": "read_file", "input": {"path": "a.txt"}}
        ])
    );
    assert_eq!(
        messages[2],
        json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "41"}]})
    );
}

#[test]
fn an_openai_request_sends_arguments_as_a_string_and_answers_by_call_id() {
    let body = conversation().body(Provider::OpenAi);
    assert_eq!(body["stream"], false);
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["tool_choice"], "auto", "llama.cpp's server takes a missing tool_choice as none");
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages[0], json!({"role": "system", "content": "be brief"}));
    assert_eq!(
        messages[2]["tool_calls"],
        json!([{"id": "toolu_01", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"a.txt\"}"}}])
    );
    assert_eq!(messages[3], json!({"role": "tool", "tool_call_id": "toolu_01", "content": "41"}));
}

#[test]
fn an_ollama_request_sends_arguments_as_an_object_and_answers_by_tool_name() {
    let body = conversation().body(Provider::Ollama);
    assert_eq!(body["stream"], false);
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages[2]["tool_calls"], json!([{"function": {"name": "read_file", "arguments": {"path": "a.txt"}}}]));
    assert_eq!(messages[3], json!({"role": "tool", "tool_name": "read_file", "content": "41"}));
}

#[test]
fn an_anthropic_reply_with_text_and_tool_use() {
    // The Messages API's reply, as documented.
    let reply = json!({
        "id": "msg_01Aq9w938a90dw8q",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "text", "text": "I'll check the file."},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "read_file", "input": {"path": "check.sh"}}
        ],
        "stop_reason": "tool_use",
        "stop_sequence": null,
        "usage": {"input_tokens": 472, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 100, "output_tokens": 91}
    });
    let parsed = parse_reply(Provider::Anthropic, &reply).unwrap();
    assert_eq!(parsed.text, "I'll check the file.");
    assert_eq!(
        parsed.calls,
        vec![Call {
            id: "toolu_01A09q90qw90lq917835lq9".into(),
            name: "read_file".into(),
            arguments: json!({"path": "check.sh"})
        }]
    );
    assert_eq!((parsed.input_tokens, parsed.output_tokens, parsed.cached_input_tokens), (472, 91, 100));
    assert!(!parsed.truncated);
    let done = json!({"content": [{"type": "text", "text": "Done."}], "stop_reason": "max_tokens", "usage": {}});
    let parsed = parse_reply(Provider::Anthropic, &done).unwrap();
    assert!(parsed.calls.is_empty() && parsed.truncated);
    let nameless = json!({"content": [{"type": "tool_use", "id": "t", "input": {}}]});
    assert!(parse_reply(Provider::Anthropic, &nameless).is_err());
}

#[test]
fn an_openai_reply_with_tool_calls_and_string_arguments() {
    let reply = json!({
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1_795_000_000,
        "model": "qwen2.5:7b",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": null,
                "tool_calls": [
                    {"id": "call_9pw1", "type": "function", "function": {"name": "write_file", "arguments": "{\"path\":\"a.txt\",\"content\":\"42\\n\"}"}},
                    {"id": "call_9pw2", "type": "function", "function": {"name": "list_files", "arguments": ""}},
                    {"id": "call_9pw3", "type": "function", "function": {"name": "search", "arguments": "{not json"}}
                ]
            },
            "logprobs": null,
            "finish_reason": "tool_calls"
        }],
        "usage": {"prompt_tokens": 82, "completion_tokens": 17, "total_tokens": 99, "prompt_tokens_details": {"cached_tokens": 32}}
    });
    let parsed = parse_reply(Provider::OpenAi, &reply).unwrap();
    assert_eq!(parsed.text, "");
    assert_eq!(parsed.calls[0].arguments, json!({"path": "a.txt", "content": "42\n"}));
    assert_eq!(parsed.calls[1].arguments, json!({}));
    assert_eq!(parsed.calls[2].arguments, json!({"_raw": "{not json"}));
    assert_eq!((parsed.input_tokens, parsed.cached_input_tokens, parsed.output_tokens), (50, 32, 17));
    assert!(parse_reply(Provider::OpenAi, &json!({"choices": []})).is_err());
}

#[test]
fn an_ollama_reply_with_tool_calls_gets_ids() {
    let reply = json!({
        "model": "qwen2.5-coder:7b",
        "created_at": "2025-10-02T10:00:01.123456789Z",
        "message": {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "read_file", "arguments": {"path": "check.sh"}}},
            {"function": {"name": "run_command", "arguments": {"command": "sh check.sh"}}}
        ]},
        "done": true,
        "done_reason": "stop",
        "prompt_eval_count": 120,
        "eval_count": 20
    });
    let parsed = parse_reply(Provider::Ollama, &reply).unwrap();
    let ids: Vec<&str> = parsed.calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, vec!["call_0", "call_1"]);
    assert_eq!((parsed.input_tokens, parsed.output_tokens), (120, 20));
}
