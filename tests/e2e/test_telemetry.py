"""Per-request telemetry through the real binary: unrouted SmolLM2 answers
get a full record (the engine's queue, prefill and decode times among
them), a tenant's key reads its own records only, `switchyard telemetry
query` exports them, and `--no-telemetry` keeps none."""

import csv
import io
import json
import subprocess
import urllib.request

from openai import OpenAI

from conftest import BINARY, MODEL, start, stop


def key(tmp_path, tenant, role):
    made = subprocess.run([BINARY, "keys", "create", "--tenant", tenant, "--role", role, "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, check=True)
    return made.stdout.strip()


def admin_get(base, path, key):
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read().decode()


def query(tmp_path, *args):
    out = subprocess.run([BINARY, "telemetry", "query", "--data-dir", str(tmp_path), *args],
                         capture_output=True, text=True, check=True)
    return out.stdout


def test_records_are_complete_scoped_by_tenant_and_exported(tmp_path):
    admin, acme, globex = key(tmp_path, "ops", "admin"), key(tmp_path, "acme", "tenant"), key(tmp_path, "globex", "tenant")
    proc, base = start(tmp_path, "--node-id", "e2e-node")
    try:
        for k, stream in [(acme, False), (acme, True), (globex, False)]:
            client = OpenAI(base_url=f"{base}/v1", api_key=k)
            out = client.chat.completions.create(model=MODEL, max_tokens=8, stream=stream,
                                                 messages=[{"role": "user", "content": "Say hi."}])
            if stream:
                assert "".join(c.choices[0].delta.content or "" for c in out if c.choices)
        mine = json.loads(admin_get(base, "/admin/telemetry", acme))["data"]
        assert [r["tenant"] for r in mine] == ["acme", "acme"], mine
        asked_for_other = json.loads(admin_get(base, "/admin/telemetry?tenant=globex", acme))["data"]
        assert {r["tenant"] for r in asked_for_other} == {"acme"}, "a tenant key cannot widen its view"
        everyone = json.loads(admin_get(base, "/admin/telemetry", admin))["data"]
        assert sorted(r["tenant"] for r in everyone) == ["acme", "acme", "globex"]
        newest = json.loads(admin_get(base, "/admin/telemetry?order=newest&limit=1", admin))["data"]
        assert newest[0]["tenant"] == "globex"

        streamed = next(r for r in mine if r["stream"])
        assert (streamed["model"], streamed["route"], streamed["node"], streamed["label"]) == (
            MODEL, MODEL, "e2e-node", "answered")
        assert streamed["runtime"].startswith("llama.cpp") and streamed["policy_id"] == "none"
        for field in ["queue_ms", "prefill_ms", "decode_ms", "ttft_ms", "itl_p50_ms", "total_ms",
                      "prompt_tokens", "completion_tokens"]:
            assert streamed[field] is not None, (field, streamed)
        assert streamed["disconnected"] is False and streamed["measured_ms"] > 0
    finally:
        stop(proc)

    lines = query(tmp_path, "--format", "jsonl").splitlines()
    assert len(lines) == 3 and all(json.loads(l)["node"] == "e2e-node" for l in lines)
    rows = list(csv.DictReader(io.StringIO(query(tmp_path, "--format", "csv", "--tenant", "acme"))))
    assert len(rows) == 2 and rows[0]["model"] == MODEL and float(rows[0]["total_ms"]) > 0
    table = query(tmp_path, "--last", "1h")
    assert table.splitlines()[0].split()[:3] == ["request_id", "tenant", "route"] and len(table.splitlines()) == 4
    trace = tmp_path / "recorded.jsonl"
    query(tmp_path, "--format", "trace", "--out", str(trace))
    assert len(trace.read_text().splitlines()) == 3
    bad = subprocess.run([BINARY, "telemetry", "query", "--data-dir", str(tmp_path), "--last", "5y"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "s, m, h or d" in bad.stderr


def test_no_telemetry_keeps_no_record_of_unrouted_requests(tmp_path):
    proc, base = start(tmp_path, "--no-telemetry")
    try:
        client = OpenAI(base_url=f"{base}/v1", api_key="unused")
        client.chat.completions.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hi."}])
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=30).read().decode()
        assert "switchyard_requests_total{" not in metrics
    finally:
        stop(proc)
    assert query(tmp_path, "--format", "jsonl") == ""
