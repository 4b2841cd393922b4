"""die_with_supervisor arms only in a BentoML worker (tests/integration/test_server_process.py
kills a real supervisor); anywhere else, e.g. the ``bentoml serve`` process, it must do nothing."""

import threading

import bentoml  # noqa: F401  (the guard reads BentoML's server context)

from llmops.supervision import die_with_supervisor, in_bentoml_worker


def test_outside_a_worker_it_arms_nothing():
    threads = set(threading.enumerate())
    assert not in_bentoml_worker()
    assert die_with_supervisor() is False
    assert set(threading.enumerate()) <= threads  # no thread started (others may have ended)


def test_every_service_arms_it_at_import():
    """The kill test runs a test service; each shipped service must make the same call at import
    (module level, so it is armed before any slow set-up)."""
    import ast
    from pathlib import Path

    services = sorted((Path(__file__).parents[2] / "services").glob("*.py"))
    services = [p for p in services if p.name != "__init__.py"]
    assert len(services) >= 4
    unarmed = []
    for path in services:
        calls = [
            node
            for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "id", None) == "die_with_supervisor"
        ]
        if not calls:
            unarmed.append(path.name)
    assert unarmed == []
