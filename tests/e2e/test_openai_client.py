"""End to end through the official `openai` Python client against `switchyard serve`."""

import json
import urllib.request

import openai
import pytest

from conftest import MODEL


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=120)


def ask(client, **kw):
    args = dict(model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=16, temperature=0)
    args.update(kw)
    return client.chat.completions.create(**args)


def test_models_lists_the_loaded_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_chat_completion(client):
    r = ask(client, logprobs=True, top_logprobs=2)
    assert r.object == "chat.completion"
    assert r.model == MODEL
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens == len(r.choices[0].logprobs.content)
    assert all(len(t.top_logprobs) == 2 for t in r.choices[0].logprobs.content)
    timings = r.model_extra["timings"]
    assert timings["predicted_n"] == r.usage.completion_tokens
    assert timings["ttft_ms"] <= timings["total_ms"]


def test_streaming_matches_non_streaming(client):
    full = ask(client).choices[0].message.content
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].usage.completion_tokens > 0
    assert "timings" in chunks[-1].model_extra


def test_seed_reproduces_text(client):
    kw = dict(temperature=1.0, seed=7, max_tokens=24, messages=[{"role": "user", "content": "Invent a name for a cat."}])
    assert ask(client, **kw).choices[0].message.content == ask(client, **kw).choices[0].message.content


def test_stop_text_is_not_returned(client):
    full = ask(client, max_tokens=24).choices[0].message.content
    stop = full.split()[2]
    cut = ask(client, max_tokens=24, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.index(stop)]


def test_json_schema_response_format(client):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    r = ask(client, max_tokens=64, response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}})
    value = json.loads(r.choices[0].message.content)
    assert set(value) == {"city", "population"}
    assert isinstance(value["city"], str) and isinstance(value["population"], int)


def test_errors_surface_as_openai_exceptions(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        ask(client, model="no-such-model")
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, max_tokens=0)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, n=2)
    assert e.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, messages=[])
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, messages=[{"role": "user", "content": "word " * 5000}])
    assert e.value.code == "context_length_exceeded"
    with urllib.request.urlopen(server + "/readyz") as r:
        assert r.status == 200
    assert ask(client).choices[0].message.content
