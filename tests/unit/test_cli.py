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

    # the shadow slot: --to (or --alias) moves another alias, the champion stays
    challenged = llmops("models", "promote", f"{model_name}:{v2}", "--to", "challenger")
    assert challenged.returncode == 0 and f"{model_name}@challenger: (unset) -> {v2}" in challenged.stdout
    assert Registry().aliases(model_name) == {"champion": v1, "challenger": v2}


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


def test_golden_candidates_accept_reject(tmp_path, monkeypatch):
    from llmops.inference_log import InferenceLogger
    from llmops.rag.evaluation import load_golden
    from llmops.rag.golden_growth import candidate_id
    from tests.unit.test_golden_growth import GOLDEN, RELEASE, SIMILAR, feedback, request

    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLMOPS_INFERENCE_LOG_DIR", str(tmp_path / "log"))
    golden = tmp_path / "rag_golden.yaml"
    golden.write_text(GOLDEN.read_text())
    rated, rejected = request("How do I undo a promotion?"), request("What is PSI?")
    logger = InferenceLogger(None, RELEASE)
    logger.log([rated, rejected, *(request(q, low=True) for q in SIMILAR)])
    logger.log([feedback(rated["request_id"], -1, "Run llmops models rollback rag."),
                feedback(rejected["request_id"], -1, "A drift statistic.")])  # fmt: skip
    logger.close()
    correction = candidate_id("correction", "How do I undo a promotion?", "Run llmops models rollback rag.")
    cluster = candidate_id("low_confidence", SIMILAR[0], None)
    where = ("--golden", str(golden))

    listed = llmops("rag", "golden", "candidates", *where)
    assert listed.returncode == 0, listed
    assert correction in listed.stdout and cluster in listed.stdout and "needs --reference" in listed.stdout
    assert "corrections: 2; low-confidence requests: 3" in listed.stdout

    before = load_golden(golden).content_version
    accepted = llmops("rag", "golden", "accept", correction, *where)
    after = load_golden(golden).content_version
    assert accepted.returncode == 0, accepted
    assert f"golden rag_golden: {before} -> {after} (24 -> 25 items)" in accepted.stdout
    assert "fine-tune records: 1 appended to" in accepted.stdout
    rejecting = candidate_id("correction", "What is PSI?", "A drift statistic.")
    assert llmops("rag", "golden", "reject", rejecting, *where).returncode == 0
    listed = llmops("rag", "golden", "candidates", *where)
    assert cluster in listed.stdout and correction not in listed.stdout and rejecting not in listed.stdout

    for args, message in [
        (("accept", "gc-nope"), "unknown candidate id 'gc-nope'"),
        (("reject", "gc-nope"), "unknown candidate id 'gc-nope'"),
        (("accept", cluster), "--reference"),
        (("accept", correction), "was accepted already"),
        (("candidates", "--since", "yesterday"), "--since"),
        (("candidates", "--min-cluster", "0"), "--min-cluster"),
        (("candidates", "--golden", str(tmp_path / "none.yaml")), "no such file"),
    ]:
        result = llmops("rag", "golden", *args, *(where if "--golden" not in args else ()))
        assert result.returncode == 2, result
        assert result.stdout.startswith("error:") and len(result.stdout.splitlines()) == 1, result.stdout
        assert message in result.stdout and "Traceback" not in result.stderr
    assert load_golden(golden).content_version == after
    done = llmops("rag", "golden", "accept", cluster, "--reference", "llmops models rollback rag", *where)
    assert done.returncode == 0 and "(25 -> 26 items)" in done.stdout and "fine-tune" not in done.stdout
