"""Data protection through the real binary and the official `openai`
client: an address is redacted before the "cloud" (a loopback mock that
echoes what it was sent, in the real wire format, 3 characters a chunk)
and put back in the answer, streamed or not; a key the cloud makes up is
redacted on the way out; a card number keeps the request on the embedded
SmolLM2 route; the payload is kept encrypted and replays with its key;
the audit chain verifies."""

import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
from openai import OpenAI

from conftest import BINARY, MODEL, start, stop

SECRET = "AKIAIOSFODNN7EXAMPLE"
SEEN = []


class Echo(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        SEEN.append(body)
        text = "You said: " + body["messages"][-1]["content"]
        if "leak" in text:
            text += f" The key is {SECRET}."
        if not body.get("stream"):
            out = json.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": body["model"],
                              "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                           "finish_reason": "stop"}],
                              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()

        def chunk(delta, finish=None):
            c = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            self.wfile.write(f"data: {json.dumps(c)}\n\n".encode())
            self.wfile.flush()

        chunk({"role": "assistant", "content": ""})
        for i in range(0, len(text), 3):
            chunk({"content": text[i:i + 3]})
        chunk({}, "stop")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("protect")
    mock = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=mock.serve_forever, daemon=True).start()
    policy = tmp / "policy.toml"
    policy.write_text(f"""
version = "e2e-protect.1"
default_route = "cloud"

[[routes]]
name = "cloud"
backend = "upstream"
model = "gpt-mock"
url = "http://127.0.0.1:{mock.server_address[1]}/v1"
allowed_classes = ["public"]
fallback = ["local"]

[[routes]]
name = "local"
backend = "embedded"
model = "{MODEL}"
allowed_classes = ["public", "internal", "regulated"]

[protect]
detectors = {{ email = "internal", card = "regulated" }}
actions = {{ internal = {{ action = "redact", restore = true }}, regulated = {{ action = "local" }} }}
output = {{ redact = ["secret"] }}
input = {{ max_messages = 8, neutralise_injection = true }}

[[protect.payloads]]
keep = "encrypted"
retention_days = 7
""")
    keys = tmp / "keys"
    keys.write_text("k1 " + "ab" * 32 + "\n")
    proc, base = start(tmp, "--policy", str(policy), "--payload-key-file", str(keys))
    yield base, tmp, policy, keys
    stop(proc)
    mock.shutdown()


def test_redacted_for_the_cloud_and_restored_for_the_caller(served):
    base, *_ = served
    client = OpenAI(base_url=f"{base}/v1", api_key="unused")
    prompt = "Forward this to dana@example.com and cc dana@example.com again."
    plain = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": prompt}])
    assert plain.choices[0].message.content == "You said: " + prompt
    assert "dana@" not in json.dumps(SEEN[-1]) and "[EMAIL_1]" in json.dumps(SEEN[-1])
    stream = client.chat.completions.create(model="auto", stream=True, messages=[{"role": "user", "content": prompt}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "You said: " + prompt

    leaked = client.chat.completions.create(model="auto", stream=True, messages=[{"role": "user", "content": "leak"}])
    text = "".join(c.choices[0].delta.content or "" for c in leaked if c.choices)
    assert text == "You said: leak The key is [REDACTED_AWS_KEY].", text

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}] * 9)
    assert e.value.code == "too_many_messages"


def test_a_card_stays_local_and_its_payload_replays_with_the_key(served):
    base, tmp, policy, keys = served
    client = OpenAI(base_url=f"{base}/v1", api_key="unused")
    before = len(SEEN)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", max_tokens=4, messages=[{"role": "user", "content": "Refund 4111 1111 1111 1111 please"}])
    assert raw.headers["x-switchyard-route"] == "local"
    assert len(SEEN) == before, "the cloud saw nothing"
    request_id = raw.headers["x-switchyard-request-id"]
    raw.parse()
    time.sleep(0.5)  # payloads are queued without waiting; written within 100 ms
    explained = subprocess.run([BINARY, "route", "explain", "--policy", str(policy), "--request-id", request_id,
                                "--data-dir", str(tmp), "--payload-key-file", str(keys)],
                               capture_output=True, text=True)
    assert explained.returncode == 0, explained.stderr
    decision = json.loads(explained.stdout)
    assert decision["route"] == "local" and decision["local_only"] is True
    assert "the same rule and route under the same policy" in explained.stderr

    verified = subprocess.run([BINARY, "audit", "verify", "--data-dir", str(tmp)], capture_output=True, text=True)
    assert verified.returncode == 0 and verified.stdout.startswith("ok:"), verified.stdout + verified.stderr
    log = subprocess.run([BINARY, "audit", "log", "--data-dir", str(tmp)], capture_output=True, text=True).stdout
    assert "policy" in log and f"model:{MODEL}" in log, log
