"""The hub's gateway through the official Python clients, streaming and not, with and without
tools, on every model.

Run by tests/gateway.rs: usage: check_gateway.py HUB_URL TOKEN MODEL:TEXT:INPUT:OUTPUT...
Each MODEL is served by a sidecar's endpoint of some API (Ollama, OpenAI-compatible, Anthropic);
each client is asked for each model, so every pair of the caller's API and the endpoint's is
crossed. TEXT is the reply expected, INPUT and OUTPUT the tokens the usage must say.
Each check prints one line; any failure raises, and the exit status says so.
"""

import json
import sys

import anthropic
import ollama
import openai

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ASK = {"role": "user", "content": "What is the weather in Paris?"}
# What each double is scripted to answer a request with tools: a call, then (given the
# result) this text.
CALLED = {"city": "Paris"}
ANSWER = "It is sunny in Paris."


def check_openai_tools(url, token, model):
    client = openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "The weather", "parameters": SCHEMA}}]
    first = client.chat.completions.create(model=model, messages=[ASK], tools=tools)
    assert first.choices[0].finish_reason == "tool_calls", first
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == CALLED, call
    asked = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}],
    }
    answered = [ASK, asked, {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    second = client.chat.completions.create(model=model, messages=answered, tools=tools)
    assert second.choices[0].message.content == ANSWER, second
    calls, finish = {}, None
    for chunk in client.chat.completions.create(model=model, messages=[ASK], tools=tools, stream=True):
        for choice in chunk.choices or []:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                entry["name"] += (delta.function.name or "") if delta.function else ""
                entry["arguments"] += (delta.function.arguments or "") if delta.function else ""
    assert finish == "tool_calls", finish
    assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == CALLED, calls
    print(f"openai tools {model}: ok")


def check_anthropic_tools(url, token, model):
    client = anthropic.Anthropic(base_url=url, api_key=token, max_retries=0)
    tools = [{"name": "get_weather", "description": "The weather", "input_schema": SCHEMA}]
    first = client.messages.create(model=model, max_tokens=64, tools=tools, messages=[ASK])
    assert first.stop_reason == "tool_use", first
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == CALLED, use
    asked = {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]}
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}]}
    second = client.messages.create(model=model, max_tokens=64, tools=tools, messages=[ASK, asked, result])
    assert second.content[0].text == ANSWER, second
    with client.messages.stream(model=model, max_tokens=64, tools=tools, messages=[ASK]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use", final
    use = next(b for b in final.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == CALLED, final
    print(f"anthropic tools {model}: ok")


def check_ollama_tools(url, token, model):
    client = ollama.Client(host=url, headers={"Authorization": f"Bearer {token}"})
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "The weather", "parameters": SCHEMA}}]
    first = client.chat(model=model, messages=[ASK], tools=tools)
    call = first.message.tool_calls[0]
    assert call.function.name == "get_weather" and dict(call.function.arguments) == CALLED, first
    answered = [ASK, first.message, {"role": "tool", "content": "sunny, 21 C", "tool_name": "get_weather"}]
    second = client.chat(model=model, messages=answered, tools=tools)
    assert second.message.content == ANSWER, second
    calls = []
    for part in client.chat(model=model, messages=[ASK], tools=tools, stream=True):
        calls.extend(part.message.tool_calls or [])
    assert calls and calls[0].function.name == "get_weather" and dict(calls[0].function.arguments) == CALLED, calls
    print(f"ollama tools {model}: ok")


def check_openai(url, token, model, text, tokens_in, tokens_out):
    client = openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0)
    streamed, usage, finish = "", None, None
    for chunk in client.chat.completions.create(
        model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ):
        for choice in chunk.choices or []:
            streamed += choice.delta.content or ""
            finish = choice.finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert streamed == text, repr(streamed)
    assert finish == "stop", finish
    assert (usage.prompt_tokens, usage.completion_tokens) == (tokens_in, tokens_out), usage
    whole = client.chat.completions.create(model=model, messages=MESSAGES)
    assert whole.choices[0].message.content == text, whole
    assert whole.choices[0].finish_reason == "stop", whole
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (tokens_in, tokens_out), whole
    assert whole.id.startswith("chatcmpl-"), whole.id
    print(f"openai {model}: ok")


def check_anthropic(url, token, model, text, tokens_in, tokens_out):
    client = anthropic.Anthropic(base_url=url, api_key=token, max_retries=0)
    with client.messages.stream(
        model=model, max_tokens=64, system="be brief", messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text, repr(streamed)
    assert final.stop_reason == "end_turn", final
    assert (final.usage.input_tokens, final.usage.output_tokens) == (tokens_in, tokens_out), final.usage
    whole = client.messages.create(
        model=model, max_tokens=64, system="be brief", messages=[{"role": "user", "content": "hi"}]
    )
    assert whole.content[0].text == text, whole
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (tokens_in, tokens_out), whole
    print(f"anthropic {model}: ok")


def check_ollama(url, token, model, text, tokens_in, tokens_out):
    client = ollama.Client(host=url, headers={"Authorization": f"Bearer {token}"})
    streamed, last = "", None
    for chunk in client.chat(model=model, messages=MESSAGES, stream=True):
        streamed += chunk["message"]["content"]
        last = chunk
    assert streamed == text, repr(streamed)
    assert last["done"] and last["done_reason"] == "stop", last
    assert (last["prompt_eval_count"], last["eval_count"]) == (tokens_in, tokens_out), last
    whole = client.chat(model=model, messages=MESSAGES)
    assert whole["message"]["content"] == text, whole
    generated = "".join(c["response"] for c in client.generate(model=model, prompt="hi", stream=True))
    assert generated == text, repr(generated)
    assert client.generate(model=model, prompt="hi")["response"] == text
    print(f"ollama {model}: ok")


def check_refusals(url, token, models):
    """An unknown model is a 404 naming what is served; a bad key a 401; each client raises its own."""
    try:
        openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0).chat.completions.create(
            model="no-such-model", messages=MESSAGES
        )
    except openai.NotFoundError as err:
        assert all(m in str(err) for m in models), err
    else:
        raise AssertionError("openai: no 404")
    try:
        anthropic.Anthropic(base_url=url, api_key="wrong", max_retries=0).messages.create(
            model=models[0], max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    except anthropic.AuthenticationError as err:
        assert err.status_code == 401, err
    else:
        raise AssertionError("anthropic: no 401")
    try:
        ollama.Client(host=url, headers={"Authorization": f"Bearer {token}"}).chat(
            model="no-such-model", messages=MESSAGES
        )
    except ollama.ResponseError as err:
        assert err.status_code == 404 and "not served" in err.error, err
    else:
        raise AssertionError("ollama: no 404")
    listed = [m.id for m in openai.OpenAI(base_url=url + "/v1", api_key=token).models.list()]
    assert sorted(listed) == sorted(models), listed
    tags = [m.model for m in ollama.Client(host=url, headers={"Authorization": f"Bearer {token}"}).list().models]
    assert sorted(tags) == sorted(models), tags
    print("refusals and listings: ok")


if __name__ == "__main__":
    hub, token = sys.argv[1:3]
    cases = []
    for arg in sys.argv[3:]:
        model, text, tokens_in, tokens_out = arg.rsplit(":", 3)
        cases.append((model, text, int(tokens_in), int(tokens_out)))
    for case in cases:
        check_openai(hub, token, *case)
        check_anthropic(hub, token, *case)
        check_ollama(hub, token, *case)
        check_openai_tools(hub, token, case[0])
        check_anthropic_tools(hub, token, case[0])
        check_ollama_tools(hub, token, case[0])
    check_refusals(hub, token, [c[0] for c in cases])
