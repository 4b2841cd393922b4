"""Shared fixtures. The whole session uses a private BentoML home, set before anything
imports bentoml, so tests never touch ~/bentoml; model names are unique per test."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_STATE = Path(tempfile.mkdtemp(prefix="llmops-tests-"))
atexit.register(shutil.rmtree, _STATE, ignore_errors=True)
os.environ["BENTOML_HOME"] = str(_STATE / "bentoml")
# Flow runs use the repo's ./.metaflow (git-ignored), as a user's runs do: Metaflow 2.19's
# card store ignores METAFLOW_CARD_LOCALROOT and a moved local sysroot when reading cards.
os.environ["LLMOPS_HOME"] = str(_STATE / "llmops")
os.environ.setdefault("METAFLOW_USER", "tests")
os.environ["BENTOML_DO_NOT_TRACK"] = "True"
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture
def model_name() -> str:
    """A registry name no other test uses (tests share one BentoML home)."""
    return "clf-" + uuid.uuid4().hex[:8]


def find_free_port() -> int:
    """A port on 127.0.0.1 that the OS says is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    return find_free_port()


@pytest.fixture(scope="session")
def smollm2_base() -> Path:
    """SmolLM2-135M-Instruct as a plain model folder, converted from the packaged GGUF once per
    test session (into the session's $LLMOPS_HOME, where flows and services find it too)."""
    from llmops.llm.base_models import SMOLLM2, resolve_base_model

    return Path(resolve_base_model(SMOLLM2).path)


def run_flow(
    flow: str, *args: str, timeout: int = 420, top: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """``python flows/<flow> <top> run <args>`` from the repo root, as a user would; ``top``
    holds options that come before ``run`` (e.g. ``--config policy FILE``)."""
    return subprocess.run(
        [sys.executable, str(REPO / "flows" / flow), "--no-pylint", *top, "run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )


@contextlib.contextmanager
def serve_bento(target: str, log_dir: Path, ready_s: float = 90, **env: str) -> Iterator:
    """``bentoml serve <target>`` on a free port of 127.0.0.1; yields an httpx client once
    /readyz answers 200, and stops the server (and its workers) afterwards."""
    import httpx

    port = find_free_port()
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOPS_API")}
    server_env |= {"LLMOPS_INFERENCE_LOG_DIR": str(log_dir), "LLMOPS_INFERENCE_LOG_FLUSH_S": "0.1", **env}
    output = log_dir / f"server-{port}.log"
    with open(output, "w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO, env=server_env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"bentoml serve exited {process.returncode}:\n{output.read_text()[-4000:]}")
            if "Application startup failed" in output.read_text():  # BentoML restarts, never exits
                pytest.fail(f"bentoml serve could not start the service:\n{output.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"bentoml serve not ready after {ready_s} s:\n{output.read_text()[-4000:]}")
            with contextlib.suppress(httpx.TransportError):
                if client.get("/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        yield client
    finally:
        client.close()
        process.terminate()  # the arbiter stops its workers on SIGTERM
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the session this test started
            process.wait()


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests skip, with the reason, where CUDA is not available."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    try:
        import torch

        reason = None if torch.cuda.is_available() else "needs CUDA: torch.cuda.is_available() is False"
    except ImportError:
        reason = "needs CUDA: torch is not installed"
    if reason:
        for item in gpu_tests:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    """A real S3 API: ``moto_server`` on a free port of 127.0.0.1 with the bucket ``llmops``.
    Yields the environment that points Metaflow's S3 datastore (and boto3) at it; a test adds
    it to the environment of the processes it starts, or uses ``monkeypatch`` for itself."""
    import boto3

    port = find_free_port()
    log = _STATE / f"moto-{port}.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "METAFLOW_DEFAULT_DATASTORE": "s3",
        "METAFLOW_DATASTORE_SYSROOT_S3": "s3://llmops/metaflow",
        "METAFLOW_S3_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                                  aws_secret_access_key="testing", region_name="us-east-1")  # fmt: skip
                s3.create_bucket(Bucket="llmops")
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.3)
        yield env
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> dict[str, str]:
    """The moto server's environment set for this test (and the processes it starts)."""
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # boto3 would prefer it to the S3 one
    return s3_server
