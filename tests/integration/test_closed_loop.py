"""The closed loop for real: serve → shifted traffic → monitor → retrain → gate → promote → reload.

A real `bentoml serve` on 127.0.0.1, real Metaflow runs (the monitor starts the training run
through metaflow.Runner), the real registry. Steady traffic runs across the reload and must
not see a single failed request.
"""

import threading
import uuid
from datetime import datetime, timezone

import numpy as np
import pytest
from metaflow import Run, namespace
from metaflow.cards import get_cards

from llmops.inference_log import read_log
from llmops.registry import Registry
from llmops.tabular.data import load_table
from llmops.tabular.simulate import send, shift
from tests.conftest import REPO, run_flow
from tests.integration.test_classifier_service import serve
from tests.integration.test_train_flow import card_content

pytestmark = [pytest.mark.slow, pytest.mark.integration]
FAST = "logistic_regression"
SHIFTED = [f"{kind} {what}" for kind in ("mean", "worst") for what in
           ("radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity",
            "concave points", "symmetry", "fractal dimension")]  # fmt: skip


@pytest.fixture(scope="module")
def model_name():
    name = "loop-" + uuid.uuid4().hex[:8]
    result = run_flow("train_classifier.py", "--model-name", name, "--models", FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    return name


@pytest.fixture(scope="module")
def traffic():
    return shift(load_table().sample(300, random_state=3), SHIFTED, 1.5)


class SteadyTraffic(threading.Thread):
    """Unshifted requests in a loop until stopped; records every outcome."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop, self.versions, self.failures = url, threading.Event(), [], []
        self.rows = load_table().head(5)

    def run(self):
        while not self.stop.is_set():
            try:
                self.versions.extend(send(self.url, self.rows, "target", batch=5)["model_version"])
            except Exception as exc:  # any failure is what the test counts
                self.failures.append(repr(exc))


def monitor(tmp_path, name, since, log_dir, feedback, top=()):
    run_id_file = tmp_path / "monitor-run-id"
    result = run_flow(
        "monitor_drift.py",
        "--model-name",
        name,
        "--since",
        since,
        "--log-dir",
        str(log_dir),
        "--feedback",
        str(feedback),
        "--retrain-models",
        FAST,
        "--run-id-file",
        str(run_id_file),
        top=top,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    namespace(None)
    return Run(f"MonitorDriftFlow/{run_id_file.read_text().strip()}")


@pytest.fixture(scope="module")
def server(model_name, tmp_path_factory):
    """(client, log folder) of one service for the loop tests: it hot-reloads as the champion
    moves, and each test reads the log from its own start on."""
    log_dir = tmp_path_factory.mktemp("loop-log")
    with serve(model_name, log_dir) as client:
        yield client, log_dir


def send_and_label(url, traffic, log_dir, name, tmp_path, since, labels=None):
    answers = send(url, traffic, "target")
    if labels is not None:
        answers["target"] = labels
    feedback = tmp_path / "feedback.csv"
    answers[["request_id", "row", "target"]].to_csv(feedback, index=False)
    for _ in range(100):  # the service's log writer flushes every 0.1 s
        if len(read_log(log_dir, name, since=since)) >= len(traffic):
            break
        threading.Event().wait(0.1)
    return answers, feedback


def test_drift_triggers_retrain_promotion_and_hot_reload(tmp_path, model_name, traffic, server):
    before = Registry().get(model_name).version
    client, log_dir = server
    url = str(client.base_url)
    since = datetime.now(timezone.utc).isoformat()
    answers, feedback = send_and_label(url, traffic, log_dir, model_name, tmp_path, since)
    accuracy_before = (answers["prediction"] == answers["target"]).mean()

    run = monitor(tmp_path, model_name, since, log_dir, feedback)
    detect = run["detect"].task
    drifted = set(
        detect["drift_report"].data
        and [c["column"] for c in detect["drift_report"].data["columns"] if c["drifted"]]
    )
    assert detect["decision"].data["retrain"]
    assert len(drifted) >= 15 and drifted <= set(SHIFTED), drifted  # shifted columns, and only those
    assert detect["live_scores"].data["accuracy"] == pytest.approx(accuracy_before, abs=1e-6)
    drift_card = card_content(get_cards(detect, type="llmops_drift")[0])
    assert "DRIFT" in drift_card and "mean area" in drift_card
    after = Registry().get(model_name).version
    assert after != before and "promoted" in run["end"].task["retrain_outcome"].data

    steady = SteadyTraffic(url)
    steady.start()
    threading.Event().wait(1.0)
    reload = client.post("/reload", json={}).json()
    threading.Event().wait(1.0)
    steady.stop.set()
    steady.join(30)
    assert reload["reloaded"] and reload["previous"] == before and reload["current"] == after
    assert steady.failures == [] and {before, after} <= set(steady.versions)
    assert steady.versions[-1] == after

    served = send(url, traffic.head(60), "target")
    assert set(served["model_version"]) == {after}
    assert (served["prediction"] == served["target"]).mean() > accuracy_before + 0.2


def test_retrain_that_fails_the_gate_changes_nothing(tmp_path, model_name, server):
    # new traffic (the earlier test's rows are in the champion's training data by now)
    traffic = shift(load_table().sample(300, random_state=4), SHIFTED, 1.6)
    before = Registry().get(model_name).version
    client, log_dir = server
    since = datetime.now(timezone.utc).isoformat()
    random_labels = np.random.default_rng(0).choice(["benign", "malignant"], len(traffic))
    _, feedback = send_and_label(
        str(client.base_url), traffic, log_dir, model_name, tmp_path, since, labels=random_labels
    )
    # a policy of the monitor's own: the retraining run must be gated by it, not the default
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        (REPO / "evals/classifier.yaml").read_text().replace("min_group_size: 20", "min_group_size: 21")
    )
    run = monitor(tmp_path, model_name, since, log_dir, feedback, top=("--config", "policy", str(policy)))
    outcome = run["end"].task["retrain_outcome"].data
    assert "not promoted: gate failed" in outcome and "metrics.accuracy.min" in outcome
    retrain = Run(run["retrain_model"].task["retrain_run"].data)
    assert retrain["start"].task["policy"].data["fairness"]["min_group_size"] == 21
    assert Registry().get(model_name).version == before
    reload = client.post("/reload", json={}).json()
    assert not reload["reloaded"] and reload["current"] == before
    assert set(send(str(client.base_url), traffic.head(10), "target")["model_version"]) == {before}


def test_default_window_starts_where_the_last_monitor_run_ended(tmp_path, model_name):
    def quiet_monitor(*args):
        run_id_file = tmp_path / "run-id"
        result = run_flow(
            "monitor_drift.py",
            "--model-name",
            model_name,
            "--log-dir",
            str(tmp_path),
            "--retrain",
            "false",
            "--run-id-file",
            str(run_id_file),
            *args,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        namespace(None)
        return Run(f"MonitorDriftFlow/{run_id_file.read_text().strip()}")

    first = quiet_monitor("--until", "2026-01-02T00:00:00+00:00")
    second = quiet_monitor()
    assert first["end"].task["window_until"].data == "2026-01-02T00:00:00+00:00"
    # found by its tag among this model's runs (the earlier tests' monitor runs are older)
    assert f"model:{model_name}" in first.user_tags and f"model:{model_name}" in second.user_tags
    assert second["start"].task["window_since"].data == "2026-01-02T00:00:00+00:00"
    assert "not enough traffic" in second["end"].task["verdict"].data
