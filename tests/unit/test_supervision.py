"""die_with_supervisor arms only in a BentoML worker (tests/integration/test_server_process.py
kills a real supervisor); anywhere else, e.g. the ``bentoml serve`` process, it must do nothing."""

import threading

import bentoml  # noqa: F401  (the guard reads BentoML's server context)

from llmops.supervision import die_with_supervisor, in_bentoml_worker


def test_outside_a_worker_it_arms_nothing():
    threads = set(threading.enumerate())
    assert not in_bentoml_worker()
    assert die_with_supervisor() is False
    assert set(threading.enumerate()) == threads
