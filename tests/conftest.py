"""Shared fixtures. The whole session uses a private BentoML home, set before anything
imports bentoml, so tests never touch ~/bentoml; model names are unique per test.

``make test`` runs the suite on pytest-xdist workers, one test module per worker at a time
(``--dist loadscope``, so module fixtures are built once). Each worker is a session of its own,
with its own state folder; what is costly and read-only (converted base models) is shared by all
workers through one folder, made by the first process (the controller) and built under a lock."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmops.server_process import free_port as find_free_port
from llmops.server_process import stop

REPO = Path(__file__).resolve().parents[1]
_STATE = Path(tempfile.mkdtemp(prefix="llmops-tests-"))
atexit.register(shutil.rmtree, _STATE, ignore_errors=True)
if "LLMOPS_TESTS_SHARED" not in os.environ:  # the controller, or the only process: workers inherit it
    os.environ["LLMOPS_TESTS_SHARED"] = tempfile.mkdtemp(prefix="llmops-tests-shared-")
    atexit.register(shutil.rmtree, os.environ["LLMOPS_TESTS_SHARED"], ignore_errors=True)
SHARED = Path(os.environ["LLMOPS_TESTS_SHARED"])
(SHARED / "models").mkdir(exist_ok=True)
(_STATE / "llmops").mkdir()
(_STATE / "llmops" / "models").symlink_to(SHARED / "models")  # base models: converted once per run
os.environ["BENTOML_HOME"] = str(_STATE / "bentoml")
# Flow runs use the repo's ./.metaflow (git-ignored), as a user's runs do: Metaflow 2.19's
# card store ignores METAFLOW_CARD_LOCALROOT and a moved local sysroot when reading cards.
os.environ["LLMOPS_HOME"] = str(_STATE / "llmops")
os.environ.setdefault("METAFLOW_USER", "tests")
os.environ["BENTOML_DO_NOT_TRACK"] = "True"
os.environ["HF_HUB_OFFLINE"] = "1"
# The workers' flows and servers share the cores: one compute thread per process (BLAS, OpenMP,
# torch) rather than one per core each, which fight over them (STACK.md: an LLM request took 30 s
# with torch's default under load, 2.4 s with one thread).
for _threads in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LLMOPS_TORCH_THREADS"):
    os.environ.setdefault(_threads, "1")
# Likewise one task process at a time per flow run: the two workers already keep both cores busy,
# and a foreach's branches side by side would only add processes competing for them.
for _tasks in ("METAFLOW_RUN_MAX_WORKERS", "METAFLOW_RESUME_MAX_WORKERS"):
    os.environ.setdefault(_tasks, "1")


@pytest.fixture
def model_name() -> str:
    """A registry name no other test uses (tests share one BentoML home)."""
    return "clf-" + uuid.uuid4().hex[:8]


@pytest.fixture
def free_port() -> int:
    return find_free_port()


@pytest.fixture(scope="session")
def smollm2_base() -> Path:
    """SmolLM2-135M-Instruct as a plain model folder, converted from the packaged GGUF once per
    test run (into $LLMOPS_HOME/models, shared by the workers, where flows and services find it)."""
    from llmops.llm.base_models import SMOLLM2, resolve_base_model

    return Path(resolve_base_model(SMOLLM2).path)


def run_flow(
    flow: str, *args: str, timeout: int = 420, top: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python flows/<flow> <top> run <args>`` from the repo root, as a user would; ``top``
    holds options that come before ``run`` (e.g. ``--config policy FILE``), ``env`` settings of
    this run's own over the test's environment."""
    return subprocess.run(
        [sys.executable, str(REPO / "flows" / flow), "--no-pylint", *top, "run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ | (env or {}),
    )


@contextlib.contextmanager
def serve_bento(target: str, log_dir: Path, ready_s: float = 90, **env: str) -> Iterator:
    """``bentoml serve <target>`` on a free port of 127.0.0.1; yields an httpx client once
    /readyz answers 200, and stops the server (and its workers) afterwards."""
    import httpx

    from llmops.server_process import ServerError, bento_server

    port = find_free_port()
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOPS_API")}
    server_env |= {"LLMOPS_INFERENCE_LOG_DIR": str(log_dir), "LLMOPS_INFERENCE_LOG_FLUSH_S": "0.1", **env}
    log = log_dir / f"server-{port}.log"
    try:
        with (
            bento_server(target, port=port, env=server_env, log=log, ready_s=ready_s, cwd=REPO) as server,
            httpx.Client(base_url=server.url, timeout=60) as client,
        ):
            yield client
    except ServerError as exc:  # raised only while starting
        pytest.fail(str(exc))


# The costliest modules (measured, `--durations`), started first so that the workers finish
# together instead of one of them starting a long module last; the rest keep their order.
SLOWEST_FIRST = (
    "test_closed_loop.py",
    "test_rag.py",
    "test_s3_datastore.py",
    "test_finetune_flow.py",
    "test_train_flow.py",
    "test_rag_monitor.py",
    "test_finetune_smollm2.py",
    "test_benches.py",
    "test_classifier_service.py",
    "test_llm_service.py",
    "test_service_reload.py",
    "test_bentos.py",
    "test_s3_storage.py",
    "test_flow_errors.py",
    "test_durable_log.py",
    "test_decide_challenger.py",
    "test_server_process.py",
    "test_compile.py",
)


def pytest_collection_modifyitems(config, items):
    """Slowest modules first (for the xdist workers), and ``@pytest.mark.gpu`` tests skip, with
    the reason, where CUDA is not available."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a module kept
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
        stop(process, grace_s=10)


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> dict[str, str]:
    """The moto server's environment set for this test (and the processes it starts)."""
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # boto3 would prefer it to the S3 one
    return s3_server
