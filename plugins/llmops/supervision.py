"""A service worker ends with the ``bentoml serve`` process that supervises it.

BentoML 1.4 runs each worker (``_bentoml_impl.worker.service``) as a child of the ``bentoml serve``
process (its circus arbiter), in a session of its own, holding a copy of the listening socket. When
the supervisor is stopped, it stops its workers; when it is killed (``kill -9``, the OOM killer),
nothing does: the orphaned worker goes on answering on the port, and a new server cannot bind it.

Every service calls :func:`die_with_supervisor` once, at import, after its imports::

    from llmops.supervision import die_with_supervisor

    die_with_supervisor()

In a worker it arms two guards: on Linux the kernel sends SIGTERM when the parent dies
(``prctl(PR_SET_PDEATHSIG)``), and on every platform a daemon thread watches the parent and, once it
is gone, sends SIGTERM itself and SIGKILL ``grace_s`` later should the graceful stop hang (a request
that never ends). SIGTERM first, so the worker closes its socket and flushes what it logs. Anywhere
else (the ``bentoml serve`` process, ``bentoml build``, a test importing the module) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 0.5  # how often the watcher looks at the parent

_armed = False
_lock = threading.Lock()


def in_bentoml_worker() -> bool:
    """This process is a BentoML service worker: the worker entry point sets its index before it
    imports the service, and nothing else sets it."""
    if "bentoml" not in sys.modules:
        return False
    from bentoml._internal.context import server_context

    return server_context.worker_index is not None


def die_with_supervisor(grace_s: float = 10) -> bool:
    """In a BentoML worker, end this process when its parent (the supervisor) dies: SIGTERM at once,
    SIGKILL after ``grace_s`` if it is still running. Returns whether the guards are armed (False
    outside a worker). Calling it again, e.g. from a composed service, changes nothing."""
    global _armed
    with _lock:
        if _armed or not in_bentoml_worker():
            return _armed
        parent = os.getppid()
        if sys.platform.startswith("linux"):
            _set_parent_death_signal(signal.SIGTERM)
        threading.Thread(
            target=_watch_parent, args=(parent, grace_s), name="llmops-supervisor-watch", daemon=True
        ).start()
        _armed = True
        return True


def _set_parent_death_signal(sig: signal.Signals) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        # the watcher thread still ends the worker, only up to POLL_S later
        err = ctypes.get_errno()
        print(f"llmops: prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}", file=sys.stderr)


def _watch_parent(parent: int, grace_s: float) -> None:
    # An orphan is re-parented (to init or a subreaper), so a changed parent id means the
    # supervisor is gone; this also covers one that died between getppid() and prctl().
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os.kill(os.getpid(), signal.SIGKILL)
