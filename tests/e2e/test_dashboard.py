"""The dashboard at /ui in a real headless chromium (Debian's, driven by
playwright-core from npm through tests/ui/dashboard.mjs): it asks for a
key, refuses a wrong one, then shows live numbers for the traffic sent
here (SmolLM2 behind a policy with a cascade, a refusal and a handoff),
and clicks through to a record."""

import json
import os
import pathlib
import subprocess

from openai import OpenAI

from conftest import BINARY, start, stop

ROOT = pathlib.Path(__file__).resolve().parents[2]

POLICY = """
version = "dashboard.1"
default_route = "fast"

[[routes]]
name = "fast"
backend = "embedded"
model = "smollm2-135m"
allowed_classes = ["public", "internal", "regulated"]

[[routes]]
name = "strong"
backend = "embedded"
model = "smollm2-135m"
allowed_classes = ["public", "internal", "regulated"]

[categories]
weapons = ['(?i)\\bbomb\\b']
self_harm = ['(?i)\\bhurt myself\\b']

[[rules]]
id = "refuse-weapons"
when = { categories = ["weapons"] }
then = { action = "refuse", message = "I can't help with that." }

[[rules]]
id = "handoff-self-harm"
when = { categories = ["self_harm"] }
then = { action = "handoff", message = "A person from our team will contact you shortly." }

[[rules]]
id = "cascade"
then = { action = "cascade", fast = "fast", escalate = "strong", signal = "mean", threshold = -3.0 }
"""


# The machine's cost while busy, so answers have a cost per task to show.
PRICES = """
[prices.smollm2-135m]
hardware_per_hour = 0.40
idle_watts = 20
busy_watts = 65
"""


def test_dashboard_shows_live_traffic(tmp_path):
    made = subprocess.run(
        [BINARY, "keys", "create", "--tenant", "ops", "--role", "admin", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )
    key = made.stdout.strip()
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    config = tmp_path / "switchyard.toml"
    config.write_text(PRICES)
    proc, base = start(tmp_path, "--policy", str(policy), "--config", str(config))
    try:
        client = OpenAI(base_url=f"{base}/v1", api_key=key)
        ask = lambda text: client.chat.completions.create(
            model="auto", max_tokens=8, messages=[{"role": "user", "content": text}])
        for prompt in ["Say hello.", "Name a colour.", "Count to three.", "What is 2+2?"]:
            ask(prompt)
        assert "can't help" in ask("how to build a bomb").choices[0].message.refusal
        ask("I want to hurt myself")

        shot = pathlib.Path(os.environ.get("SWITCHYARD_UI_SCREENSHOT", tmp_path / "dashboard.png"))
        out = subprocess.run(
            ["node", str(ROOT / "tests/ui/dashboard.mjs"), base, key, str(shot)],
            capture_output=True, text=True, timeout=180,
        )
        assert out.returncode == 0, out.stderr
        seen = json.loads(out.stdout.strip().splitlines()[-1])
        assert "failure" not in seen, seen
        assert seen["errors"] == [], seen["errors"]
        assert seen["asked_for_key"]
        assert "API key" in seen["wrong_key_message"] or "key" in seen["wrong_key_message"].lower(), seen
        assert seen["requests_before"] >= 6, seen
        assert seen["live_status"] == 200
        assert seen["requests_after"] > seen["requests_before"], "the page updates itself"
        routes = {row[0]: row for row in seen["routes"]}
        assert "refused" in routes and "handoff" in routes, routes
        assert "fast" in routes or "strong" in routes, routes
        assert seen["total-refused"].endswith("%") and seen["total-refused"] != "0.0%", seen
        assert seen["total-cost-per-task"].startswith("$"), seen
        assert seen["handoffs"] == 1, seen
        assert seen["chart_lines"] >= 2, seen
        assert seen["lanes"] == ["interactive"], seen
        assert seen["recent"] >= 7, seen
        assert seen["detail"]["request_id"].startswith("chatcmpl-"), seen["detail"]
        assert "reason" in seen["detail"]
        assert shot.stat().st_size > 10_000
    finally:
        stop(proc)
