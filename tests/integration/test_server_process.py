"""A server's processes end with it. BentoML starts each worker in a session of its own, holding the
listening socket: a worker must end when its supervisor is killed (``llmops.supervision``), and
``server_process``'s stop must end every process of the server, a worker its killed supervisor left
behind included. Run against ``tests/services/echo.py``, which answers with its process ids."""

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from llmops.server_process import RunningServer, bento_server

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
ECHO = "tests.services.echo:Echo"


@contextlib.contextmanager
def serve_echo(log_dir: Path, supervised: bool = True) -> Iterator[RunningServer]:
    env = os.environ | {"ECHO_SUPERVISED": "1" if supervised else "0"}
    with bento_server(ECHO, env=env, log=log_dir / "server.log", cwd=REPO) as server:
        yield server


def ids(server: RunningServer) -> dict[str, int]:
    # a fresh connection each time: nothing kept open to the server between calls
    return httpx.post(f"{server.url}/processes", headers={"Connection": "close"}, timeout=10).json()


def running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def port_free(port: int) -> bool:
    """A new server can listen on ``port``: bound with SO_REUSEADDR, as BentoML binds, so that
    connections of the old server in TIME_WAIT do not count, only a process still listening."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
        return True


def within(seconds: float, condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def kill_supervisor(server: RunningServer) -> None:
    """``kill -9`` of the ``bentoml serve`` process group (a worker has a session of its own)."""
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(10)


def test_a_worker_ends_when_its_supervisor_is_killed(tmp_path):
    with serve_echo(tmp_path) as server:
        answer = ids(server)
        worker = psutil.Process(answer["pid"])
        # the premise: the worker is the supervisor's child in a session of its own, so the
        # supervisor's process group does not hold it
        assert answer["ppid"] == server.process.pid
        assert answer["sid"] != os.getsid(server.process.pid)
        assert worker.pid in [p.pid for p in server.workers]

        kill_supervisor(server)

        assert within(5, lambda: not any(running(p) for p in server.workers)), "a worker outlived it"
        assert within(5, lambda: port_free(server.port)), f"port {server.port} still taken"
        with pytest.raises(httpx.TransportError):
            ids(server)


def test_stop_ends_every_process_of_the_server(tmp_path):
    with serve_echo(tmp_path) as server:
        tree = [psutil.Process(server.process.pid), *server.workers]
        assert psutil.Process(ids(server)["pid"]) in tree
    assert [p.pid for p in tree if running(p)] == []
    assert port_free(server.port)


def test_stop_ends_a_worker_that_outlived_its_killed_supervisor(tmp_path):
    """A service that does not call die_with_supervisor: its worker outlives the killed supervisor
    and goes on serving, and the stop still ends it."""
    with serve_echo(tmp_path, supervised=False) as server:
        worker = psutil.Process(ids(server)["pid"])
        kill_supervisor(server)
        time.sleep(1)
        assert ids(server)["pid"] == worker.pid  # the orphan still answers on the port
        assert not port_free(server.port)
    assert within(5, lambda: not running(worker))
    assert port_free(server.port)
