"""Starts the real `switchyard` binary on a free loopback port for the e2e tests."""

import os
import subprocess
import threading

import pytest

MODEL = "smollm2-135m"
BINARY = os.environ.get("SWITCHYARD_BIN", "target/release/switchyard")


def start(data_dir, *extra):
    """Starts `switchyard serve` with its own data dir; returns (process, base URL)."""
    proc = subprocess.Popen(
        [BINARY, "serve", "--model", MODEL, "--port", "0", "--threads", "2", "--parallel", "4", "--ctx-size", "4096",
         "--data-dir", str(data_dir), *extra],
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
    return proc, base


def stop(proc):
    proc.terminate()
    try:
        assert proc.wait(timeout=30) == 0, "server did not shut down cleanly"
    finally:
        proc.kill()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    proc, base = start(tmp_path_factory.mktemp("data"))
    yield base
    stop(proc)
