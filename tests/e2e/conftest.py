"""Starts the real `switchyard` binary on a free loopback port for the e2e tests."""

import os
import subprocess
import threading

import pytest

MODEL = "smollm2-135m"


@pytest.fixture(scope="session")
def server():
    binary = os.environ.get("SWITCHYARD_BIN", "target/release/switchyard")
    proc = subprocess.Popen(
        [binary, "serve", "--model", MODEL, "--port", "0", "--threads", "2", "--parallel", "4", "--ctx-size", "4096"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = None
    for line in proc.stdout:
        if "listening on " in line:
            base = line.split("listening on ")[1].split()[0]
            break
    if base is None:
        proc.kill()
        raise RuntimeError("switchyard exited before listening:\n" + proc.stderr.read())
    # Keep draining the pipes so the server never blocks on a full one.
    for pipe in (proc.stdout, proc.stderr):
        threading.Thread(target=lambda p=pipe: [None for _ in p], daemon=True).start()
    yield base
    proc.terminate()
    try:
        assert proc.wait(timeout=30) == 0, "server did not shut down cleanly"
    finally:
        proc.kill()
