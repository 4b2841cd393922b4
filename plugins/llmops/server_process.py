"""Run a service as a child process: start ``bentoml serve`` (or any server with ``/readyz``) on
127.0.0.1, wait until it is ready, stop it with all its workers. The one way the tests, the
benchmarks and the demo run a service.

BentoML starts each worker in a session of its own, so stopping the server's process group does not
reach them, and a worker outlives a supervisor that was killed. :func:`stop` therefore ends every
process of the server's tree: those it finds under the server when it stops, and those found once
the server was ready (``RunningServer.workers``), which are no longer under it if it was killed.

    env = os.environ | {"LLMOPS_CLASSIFIER_RELEASE": "classifier"}
    with bento_server("services.classifier:Classifier", env=env, log=Path("server.log")) as server:
        httpx.post(f"{server.url}/predict", json=...)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

# BentoML restarts a worker whose startup failed instead of exiting: its log says this
STARTUP_FAILED = "Application startup failed"


class ServerError(RuntimeError):
    """The server exited, could not start its service, or was not ready in time; carries its log's end."""


def free_port() -> int:
    """A port on 127.0.0.1 that the OS says is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    url: str  # http://127.0.0.1:PORT
    port: int
    process: subprocess.Popen
    log: Path | None  # where its output goes (None: this process's terminal)
    workers: list[psutil.Process]  # the processes under ``process`` once it was ready


def bentoml_command(target: str, port: int, *args: str) -> list[str]:
    """``bentoml serve TARGET --host 127.0.0.1 --port PORT ...`` with this interpreter."""
    return [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args,
    ]


@contextlib.contextmanager
def started_server(
    command: Sequence[str],
    port: int,
    *,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    ready_s: float = 90,
    cwd: Path | str | None = None,
    ready_path: str = "/readyz",
    poll_s: float = 0.3,
) -> Iterator[RunningServer]:
    """Start ``command`` (a server listening on ``port`` of 127.0.0.1) in a session of its own,
    yield once ``ready_path`` answers 200 (BentoML's ``/readyz``; ``llmops ui``'s ``/healthz``),
    asking every ``poll_s`` seconds, then stop it and every process under it (:func:`stop`)."""
    import httpx

    def tail() -> str:
        return f"; {log} ends:\n{log.read_text(errors='replace')[-4000:]}" if log is not None else ""

    sink = open(log, "w") if log is not None else None  # closed once the child has it
    try:
        process = subprocess.Popen(
            list(command), cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT if sink else None,
            start_new_session=True,
        )  # fmt: skip
    finally:
        if sink is not None:
            sink.close()
    name = " ".join(command[2:5]) if len(command) > 4 else " ".join(command)
    workers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if process.poll() is not None:
                raise ServerError(f"{name} exited with code {process.returncode}{tail()}")
            if log is not None and STARTUP_FAILED in log.read_text(errors="replace"):
                raise ServerError(f"{name} could not start its service{tail()}")
            if time.monotonic() > deadline:
                raise ServerError(f"{name} not ready after {ready_s:g} s{tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=2).status_code == 200:
                    break
            time.sleep(poll_s)
        workers = descendants(process.pid)
        yield RunningServer(f"http://127.0.0.1:{port}", port, process, log, workers)
    finally:
        stop(process, known=workers)


def descendants(pid: int) -> list[psutil.Process]:
    """Every process under ``pid`` (children, theirs, ...), whatever their session; none if it is gone."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def stop(process: subprocess.Popen, grace_s: float = 20, known: Sequence[psutil.Process] = ()) -> None:
    """Stop ``process`` and every process under it, and ``known`` (processes found under it
    earlier, which a killed ``process`` left behind): SIGTERM to ``process``, SIGKILL to its
    session after ``grace_s``; then SIGTERM to any of the others still running, SIGKILL 5 s later."""
    # psutil.Process remembers each process's start time, so a reused pid is never signalled
    tree = {p.pid: p for p in [*known, *descendants(process.pid)]}
    if process.poll() is None:
        process.terminate()  # BentoML's arbiter stops its workers
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    left = [p for p in tree.values() if _running(p)]
    for p in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(left, timeout=min(grace_s, 5))
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def _running(process: psutil.Process) -> bool:
    """Running and not a zombie (an ended process its new parent has not reaped yet)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@contextlib.contextmanager
def bento_server(
    target: str,
    *,
    port: int | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    ready_s: float = 90,
    cwd: Path | str | None = None,
    args: Sequence[str] = (),
) -> Iterator[RunningServer]:
    """``bentoml serve TARGET`` on 127.0.0.1 (a free port unless given); see :func:`started_server`."""
    port = port or free_port()
    with started_server(
        bentoml_command(target, port, *args), port, env=env, log=log, ready_s=ready_s, cwd=cwd
    ) as server:
        yield server
