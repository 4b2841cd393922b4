"""The `llmops models` command, run as a user runs it (a subprocess of the installed script)."""

import os
import subprocess
import sys

from llmops.registry import Registry


def llmops(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmops.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, COLUMNS="200"),
    )


def register(name: str, accuracy: float) -> str:
    return (
        Registry()
        .register(
            name,
            lambda folder: (folder / "w").write_text("w"),
            metadata={"metrics": {"accuracy": accuracy}, "dataset_version": "ds-abc", "run": "F/1"},
        )
        .version
    )


def test_list_show_promote_rollback(model_name):
    v1, v2 = register(model_name, 0.91), register(model_name, 0.93)

    promoted = llmops("models", "promote", f"{model_name}:{v1}")
    assert promoted.returncode == 0 and f"(unset) -> {v1}" in promoted.stdout
    assert llmops("models", "promote", f"{model_name}:{v2}").returncode == 0

    listing = llmops("models", "list", model_name)
    assert listing.returncode == 0
    assert v1 in listing.stdout and v2 in listing.stdout and "champion" in listing.stdout
    assert "accuracy=0.930" in listing.stdout

    shown = llmops("models", "show", model_name)
    assert shown.returncode == 0 and f"{model_name}:{v2}" in shown.stdout and "ds-abc" in shown.stdout

    rolled = llmops("models", "rollback", model_name)
    assert rolled.returncode == 0 and f"{v2} -> {v1}" in rolled.stdout
    assert Registry().get(model_name).version == v1


def test_errors_are_messages_not_tracebacks(model_name):
    register(model_name, 0.9)
    for args, message in [
        (("models", "promote", model_name), "give NAME:VERSION"),
        (("models", "promote", f"{model_name}:nope"), "not found"),
        (("models", "show", model_name), "has no champion yet"),
        (("models", "rollback", model_name), "nothing to roll back"),
    ]:
        result = llmops(*args)
        assert result.returncode == 2, result
        assert message in result.stdout and "Traceback" not in result.stderr


def test_a_version_that_is_not_a_tag_is_refused_naming_it(model_name, tmp_path):
    register(model_name, 0.9)
    for command in (("show",), ("promote",), ("export", str(tmp_path))):
        result = llmops("models", command[0], f"{model_name}:../../x", *command[1:])
        assert result.returncode == 2, result
        assert "version: '../../x' is not a version id" in result.stdout
        assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []
