"""The classic ML loop run for real: python flows/train_classifier.py run, asserted on artifacts."""

import base64
import re

import numpy as np
import pytest
from metaflow import Run, namespace

from llmops.registry import Registry
from llmops.tabular.data import load_table
from tests.conftest import run_flow

pytestmark = [pytest.mark.slow, pytest.mark.integration]
FAST = ("--models", "logistic_regression")


def train(tmp_path, csv, name, *extra):
    run_id_file = tmp_path / f"run-id-{csv.stem}"
    result = run_flow(
        "train_classifier.py",
        "--data",
        str(csv),
        "--model-name",
        name,
        "--run-id-file",
        str(run_id_file),
        *FAST,
        *extra,
    )
    run = None
    if run_id_file.exists():
        namespace(None)
        run = Run(f"TrainClassifierFlow/{run_id_file.read_text().strip()}")
    return result, run


@pytest.fixture(scope="module")
def cancer_csv(tmp_path_factory):
    """The bundled data plus a 'site' column for per-group metrics."""
    frame = load_table()
    frame["site"] = np.random.default_rng(0).choice(["north", "south"], len(frame))
    path = tmp_path_factory.mktemp("data") / "cancer.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def champion_run(tmp_path_factory, cancer_csv):
    name = "flow-clf"
    result, run = train(tmp_path_factory.mktemp("runs"), cancer_csv, name, "--group-column", "site")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return name, run


def test_good_data_passes_the_gate_and_becomes_champion(champion_run):
    name, run = champion_run
    decision = run["evaluate"].task["gate_decision"].data
    assert decision["passed"], decision
    assert {r["rule"] for r in decision["rules"]} >= {
        "metrics.f1.min",
        "regression.accuracy",
        "fairness.recall.gap",
        "drift.training_drifted_share",
    }
    assert "gate:passed" in run.user_tags
    end = run["end"].task
    champion = Registry().get(name)
    assert end["promoted"].data and champion.version == end["model_version"].data
    lineage = champion.metadata
    assert lineage["run"] == run.pathspec
    assert lineage["dataset_version"] == run["version"].task["dataset_version"].data
    assert lineage["metrics"] == run["evaluate"].task["eval_scores"].data
    assert set(run["evaluate"].task["group_scores"].data) == {"north", "south"}
    assert champion.read_json("schema.json")["target"] == "target"


def card_content(card) -> str:
    """The component tree a Metaflow card embeds in its HTML (base64 JSON), as text."""
    blobs = re.findall(r"[A-Za-z0-9+/=]{200,}", card.get())
    return " ".join(base64.b64decode(b).decode("utf-8", "replace") for b in blobs)


def test_cards_are_rendered(champion_run):
    _, run = champion_run
    from metaflow.cards import get_cards

    gate_cards = get_cards(run["evaluate"].task, type="llmops_gate")
    assert len(gate_cards) == 1
    content = card_content(gate_cards[0])
    assert "Gate PASSED" in content and "metrics.f1.min" in content
    eval_content = card_content(get_cards(run["evaluate"].task, type="llmops_eval")[0])
    assert "Confusion matrix" in eval_content and "north" in eval_content
    profile = card_content(get_cards(run["validate"].task, type="llmops_data_profile")[0])
    assert "Validation: passed" in profile


def test_shuffled_labels_fail_the_gate_and_champion_stays(tmp_path, champion_run, cancer_csv):
    name, _ = champion_run
    before = Registry().get(name).version
    frame = load_table(str(cancer_csv))
    frame["target"] = np.random.default_rng(1).permutation(frame["target"].to_numpy())
    shuffled = tmp_path / "shuffled.csv"
    frame.to_csv(shuffled, index=False)

    result, run = train(tmp_path, shuffled, name)
    assert result.returncode == 0, result.stderr[-3000:]
    decision = run["evaluate"].task["gate_decision"].data
    failed = {r["rule"] for r in decision["rules"] if not r["passed"]}
    assert not decision["passed"] and {"metrics.roc_auc.min", "metrics.accuracy.min"} <= failed
    assert decision["champion_version"] == before
    scored = run["evaluate"].task["champion_scored"].data  # the champion on the same shuffled test set
    assert scored["version"] == before and scored["scores"]["roc_auc"] < 0.75
    assert "gate:failed" in run.user_tags
    assert not run["end"].task["promoted"].data
    assert "gate FAILED" in result.stdout + result.stderr
    assert Registry().get(name).version == before


def test_invalid_data_stops_the_run_naming_column_and_rule(tmp_path, model_name):
    frame = load_table()
    frame.loc[: len(frame) // 2, "mean area"] = None
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    result, _ = train(tmp_path, bad, model_name)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "DataValidationFailed:" in out and "column 'mean area': rule 'max_missing_share'" in out
    assert "Traceback" not in out and "Internal error" not in out  # a headline and a message (user_errors)
    assert Registry().find(model_name) is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--selection-metric", "speed"), "--selection-metric: 'speed' is not one of"),
        (("--models", "svm"), "--models: unknown model family ['svm']"),
    ],
)
def test_bad_parameters_are_named_before_any_work(tmp_path, model_name, cancer_csv, extra, message):
    result, run = train(tmp_path, cancer_csv, model_name, *extra)
    assert result.returncode != 0 and message in result.stdout + result.stderr
    assert [step.id for step in run] == ["start"]  # failed in start, nothing else ran


def test_missing_data_file_is_named(tmp_path, model_name):
    result, _ = train(tmp_path, tmp_path / "nope.csv", model_name)
    assert result.returncode != 0 and "--data: no such file" in result.stdout + result.stderr


def test_resume_after_a_kill_inside_promote_leaves_one_version_with_the_alias(
    tmp_path, cancer_csv, model_name, monkeypatch
):
    """Finding 5: a run killed after registering (before the alias moved) and then resumed
    registered a second, orphan version. The promote guard is shared by the three flows."""
    import os
    import subprocess
    import sys

    from llmops.faults import FAULTS_ENV
    from tests.conftest import REPO

    monkeypatch.setenv(FAULTS_ENV, "promote.after_register")  # SIGKILL right after registering
    killed, run = train(tmp_path, cancer_csv, model_name)
    assert killed.returncode != 0 and run is not None
    registry = Registry()
    [orphan] = registry.versions(model_name)
    assert registry.aliases(model_name) == {}  # killed before the alias moved
    monkeypatch.delenv(FAULTS_ENV)

    run_id_file = tmp_path / "resumed-run-id"
    resumed = subprocess.run(
        [sys.executable, str(REPO / "flows" / "train_classifier.py"), "--no-pylint", "resume",
         "--origin-run-id", run.id, "--run-id-file", str(run_id_file)],
        cwd=REPO, capture_output=True, text=True, timeout=420, env=os.environ.copy(),
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert [v.version for v in registry.versions(model_name)] == [orphan.version]  # no second one
    assert registry.aliases(model_name) == {"champion": orphan.version}
    resumed_run = Run(f"TrainClassifierFlow/{run_id_file.read_text().strip()}")
    promote = resumed_run["promote"].task
    assert promote["model_version"].data == orphan.version and promote["promoted"].data
    assert "earlier attempt of this run" in promote["promotion_note"].data
    assert orphan.metadata["run"] == f"TrainClassifierFlow/{run.id}"
