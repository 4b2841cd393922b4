"""``llmops models decide`` for real: a registry with a champion and a challenger, a log where the
challenger shadowed the champion, the decide flow run as a user runs it. A challenger that
disagrees stays a challenger and every rule is printed; one that agrees becomes the champion by
compare-and-set."""

import subprocess
import sys
import uuid

import pandas as pd
import pytest
from metaflow import Flow, namespace
from metaflow.cards import get_cards

from llmops.inference_log import InferenceLogger, utc_now
from llmops.online_rules import CHALLENGER
from llmops.promotion import promote_challenger
from llmops.registry import Registry
from tests.classifier_release import fit_classifier, register_passing_classifier
from tests.conftest import REPO, run_flow
from tests.integration.test_train_flow import card_content

pytestmark = [pytest.mark.slow, pytest.mark.integration]
RECORDS = 30


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """(name, champion version, challenger version, policy file): one fitted model registered twice."""
    name = "decide-" + uuid.uuid4().hex[:8]
    model, schema = fit_classifier()
    metrics = {"accuracy": 0.95}
    champion = register_passing_classifier(name, model, schema, run_pathspec="DecideTest/1", metrics=metrics)
    challenger = register_passing_classifier(
        name, model, schema, promote=False, run_pathspec="DecideTest/2", metrics=metrics
    )
    Registry().promote(name, challenger.version, alias=CHALLENGER)
    policy = tmp_path_factory.mktemp("decide-policy") / "policy.yaml"
    policy.write_text(
        f"model: {name}\nmetrics:\n  accuracy: {{min: 0.9}}\n"
        "online:\n  min_requests: 20\n  min_agreement: 0.9\n  min_labels: 10\n  max_accuracy_drop: 0.02\n"
    )
    return name, champion.version, challenger.version, policy


def shadow_log(folder, name, champion, challenger, disagree_every=0):
    """One request of RECORDS records, answered by the champion and shadowed by the challenger
    (which predicts the other class on every ``disagree_every``-th record); labels for 20 of them."""
    rows = []
    for i in range(RECORDS):
        served = {"request_id": "req-1", "row": i, "timestamp": utc_now(), "model": name,
                  "model_version": champion, "prediction": "1", "probability": 0.9}  # fmt: skip
        flipped = disagree_every and i % disagree_every == 0
        shadow = {"model_version": challenger, "role": "shadow", "prediction": "0" if flipped else "1"}
        rows += [served, served | shadow]
    InferenceLogger(folder, name, durable=True).log(rows)
    labels = folder / "labels.csv"
    pd.DataFrame({"request_id": "req-1", "row": range(20), "label": "1"}).to_csv(labels, index=False)
    return labels


def test_a_failing_challenger_leaves_the_champion_and_prints_every_rule(tmp_path, releases):
    name, champion, challenger, policy = releases
    labels = shadow_log(tmp_path, name, champion, challenger, disagree_every=3)
    result = subprocess.run(
        [sys.executable, "-m", "llmops.cli", "models", "decide", name, "--policy", str(policy),
         "--log-dir", str(tmp_path), "--feedback", str(labels)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 1, out[-3000:] + result.stderr[-3000:]
    assert "Online gate FAILED" in out and "not promoted: gate failed on online.agreement" in out
    for line in (
        "ok          metrics.accuracy.min",
        "online.shadowed_requests         value=30       limit=20       30 shadowed records (min 20)",
        "FAIL        online.agreement                 value=0.6667   limit=0.9",
        "FAIL        online.accuracy_drop             value=0.35     limit=0.02",
    ):
        assert line in out, out[-3000:]
    assert Registry().aliases(name) == {"champion": champion, CHALLENGER: challenger}


def test_a_passing_challenger_becomes_the_champion_by_compare_and_set(tmp_path, releases):
    name, champion, challenger, policy = releases
    labels = shadow_log(tmp_path, name, champion, challenger)
    result = run_flow(
        "decide_challenger.py",
        *("--release-name", name, "--log-dir", str(tmp_path), "--feedback", str(labels)),
        top=("--config", "policy", str(policy)),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"promoted {name}:{challenger} to champion" in result.stdout
    registry = Registry()
    assert registry.aliases(name)["champion"] == challenger
    moved = registry.history(name)[-1]
    assert (moved["alias"], moved["version"], moved["previous"]) == ("champion", challenger, champion)
    namespace(None)
    run = Flow("DecideChallengerFlow").latest_run
    decision = run["start"].task["gate_decision"].data
    assert decision["passed"] and decision["champion_version"] == champion
    rules = {r["rule"]: r for r in decision["rules"]}
    assert rules["online.agreement"]["value"] == 1.0 and rules["online.accuracy_drop"]["value"] == 0.0
    card = card_content(get_cards(run["start"].task, type="llmops_gate")[0])
    assert "Gate PASSED" in card and "online.shadowed_requests" in card


def test_the_promotion_refuses_a_champion_that_moved_since_the_gate(releases):
    name, champion, challenger, _ = releases
    registry = Registry()
    registry.promote(name, champion)  # the champion the gate judged against is back...
    stale = {"passed": True, "rules": [], "policy_version": "p", "champion_version": "someone-else"}
    promoted, note = promote_challenger(name, challenger, stale)
    assert not promoted and "moved to" in note and registry.aliases(name)["champion"] == champion
    failed = {"passed": False, "rules": [{"rule": "online.agreement", "passed": False}]}
    assert promote_challenger(name, challenger, failed) == (
        False,
        "not promoted: gate failed on online.agreement",
    )


def test_decide_names_a_missing_policy_before_any_run(releases, capsys):
    from llmops.cli import main

    name = releases[0]
    assert main(["models", "decide", name, "--policy", "evals/no-such-policy.yaml"]) == 2
    assert "--policy: evals/no-such-policy.yaml not found" in capsys.readouterr().out
