"""`switchyard bakeoff`'s page in a real headless chromium (Debian's, driven
by playwright-core from npm through tests/ui/page.mjs): a small bake-off of
SmolLM2 as shipped against its own Q8_0 requantization, and the page a
person opens afterwards: charts drawn, verdict shown, no script errors."""

import json
import os
import pathlib
import subprocess

from conftest import BINARY, MODEL

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run(*args, timeout=600):
    return subprocess.run([BINARY, *args], capture_output=True, text=True, check=True, timeout=timeout)


def test_the_bakeoff_page_draws_every_chart_and_the_verdict(tmp_path):
    q8 = tmp_path / "q8.gguf"
    run("models", "quantize", MODEL, "--type", "Q8_0", "--out", str(q8))
    trace = tmp_path / "trace.jsonl"
    run("bench", "trace", "generate", "--scenario", "single", "--count", "4", "--input-tokens", "48",
        "--max-tokens", "8", "--think-ms", "0", "--out", str(trace))
    out = tmp_path / "bake"
    run("bakeoff", "--variant", f"shipped=engine:{MODEL}", "--variant", f"q8=engine:{q8}",
        "--trace", str(trace), "--dataset", str(ROOT / "datasets/eval/core/v1"), "--eval-limit", "4",
        "--concurrency", "1,2", "--parallel", "2", "--ctx-size", "2048", "--min-retention", "0.5",
        "--sla-concurrency", "2", "--out", str(out))

    shot = pathlib.Path(os.environ.get("SWITCHYARD_BAKEOFF_SCREENSHOT", tmp_path / "bakeoff.png"))
    seen = subprocess.run(
        ["node", str(ROOT / "tests/ui/page.mjs"), str(out / "bakeoff.html"), str(shot), ".verdict"],
        capture_output=True, text=True, timeout=180,
    )
    assert seen.returncode == 0, seen.stderr
    page = json.loads(seen.stdout.strip().splitlines()[-1])
    assert page["errors"] == [], page["errors"]
    assert page["charts"] == 4, page  # TTFT p95, tokens/s, goodput, quality
    assert page["marks"] >= 4 * 2, "every chart has something drawn for both variants"
    assert "Recommended:" in page["selected"] and "Meeting them:" in page["selected"], page
    assert page["tables"] == 2, page
    assert shot.stat().st_size > 10_000
