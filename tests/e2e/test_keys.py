"""API keys and rate limits as the official `openai` client meets them."""

import subprocess

import openai
import pytest

from conftest import BINARY, MODEL, start, stop


def test_a_key_works_a_bad_one_is_refused_and_a_limit_backs_the_client_off(tmp_path):
    made = subprocess.run(
        [BINARY, "keys", "create", "--tenant", "acme", "--role", "tenant", "--requests-per-minute", "2",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )
    key = made.stdout.strip()
    assert key.startswith("sy-") and key not in made.stderr
    proc, base = start(tmp_path)
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)
        args = dict(model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4)
        raw = client.chat.completions.with_raw_response.create(**args)
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        assert raw.headers["x-ratelimit-remaining-requests"] == "1"
        assert raw.parse().choices[0].message.content is not None

        stranger = openai.OpenAI(base_url=base + "/v1", api_key="sy-00000000_" + "0" * 64, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            stranger.chat.completions.create(**args)
        assert e.value.code == "invalid_api_key"

        client.chat.completions.create(**args)
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(**args)
        assert e.value.code == "rate_limit_exceeded"
        assert int(e.value.response.headers["retry-after"]) >= 1
    finally:
        stop(proc)
