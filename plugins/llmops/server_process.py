"""Run a service as a child process: start ``bentoml serve`` (or any server with ``/readyz``) on
127.0.0.1, wait until it is ready, stop it with all its workers. The one way the tests, the
benchmarks and the demo run a service.

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
) -> Iterator[RunningServer]:
    """Start ``command`` (a server listening on ``port`` of 127.0.0.1) in a session of its own,
    yield once ``/readyz`` answers 200, then stop it: SIGTERM (BentoML's arbiter stops its
    workers), SIGKILL to the whole session if it does not end within 20 s."""
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
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        yield RunningServer(f"http://127.0.0.1:{port}", port, process, log)
    finally:
        stop(process)


def stop(process: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM, then SIGKILL to the process's whole session after ``grace_s``."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


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
