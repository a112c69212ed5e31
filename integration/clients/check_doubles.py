"""Streams against AgentCom's protocol doubles with the official Python clients.

Run by tests/official_clients.rs (in CI, from a virtualenv `.ci/run` makes with the versions
pinned in requirements.txt): usage: check_doubles.py OLLAMA_URL ANTHROPIC_URL OPENAI_URL.
Each check prints one line; any failure raises, and the exit status says so.
"""

import sys

import anthropic
import ollama
import openai


def check_ollama(url):
    client = ollama.Client(host=url)
    text, last = "", None
    for chunk in client.chat(
        model="llama3.2:3b", messages=[{"role": "user", "content": "hi"}], stream=True
    ):
        text += chunk["message"]["content"]
        last = chunk
    assert text == "Hello, world", repr(text)
    assert last["done"] and last["eval_count"] == 3 and last["prompt_eval_count"] == 26, last
    # The error line after HTTP 200 (the double fails every stream whose prompt says so).
    try:
        for _ in client.chat(
            model="llama3.2:3b", messages=[{"role": "user", "content": "fail"}], stream=True
        ):
            pass
    except ollama.ResponseError as err:
        assert "unexpected EOF" in str(err), err
    else:
        raise AssertionError("the error line was not raised")
    print("ollama: ok")


def check_anthropic(url):
    # The first request meets a 429 with retry-after: the client retries it by itself.
    client = anthropic.Anthropic(base_url=url, api_key="sk-ant-test", max_retries=2)
    with client.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=64,
        system="be brief",
        messages=[{"role": "user", "content": "hi"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello!", repr(text)
    usage = final.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (25, 10, 15), usage
    assert final.stop_reason == "end_turn", final
    print("anthropic: ok")


def check_openai(url):
    client = openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0)
    text, usage = "", None
    for chunk in client.chat.completions.create(
        model="qwen2.5:7b",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    ):
        for choice in chunk.choices or []:
            text += choice.delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == "Hello!", repr(text)
    assert (usage.prompt_tokens, usage.completion_tokens) == (35, 15), usage
    assert usage.prompt_tokens_details.cached_tokens == 10, usage
    models = [m.id for m in client.models.list()]
    assert "qwen2.5:7b" in models, models
    print("openai: ok")


if __name__ == "__main__":
    ollama_url, anthropic_url, openai_url = sys.argv[1:4]
    check_ollama(ollama_url)
    check_anthropic(anthropic_url)
    check_openai(openai_url)
