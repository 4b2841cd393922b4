import pytest

from llmops.gates import PolicyError, evaluate_gate, load_policy, parse_policy
from llmops.tabular.drift import ColumnDrift, DriftReport

POLICY = """
model: clf
metrics: {accuracy: {min: 0.9}, log_loss: {max: 0.4}}
regression: {accuracy: 0.02}
fairness: {metric: recall, max_gap: 0.1, min_group_size: 10}
drift: {max_psi: 0.2, max_drifted_share: 0.1, max_training_drifted_share: 0.25}
"""
GOOD = {"accuracy": 0.95, "log_loss": 0.2, "recall": 0.9}


def by_rule(decision):
    return {r.rule: r for r in decision.rules}


def test_shipped_policy_is_valid():
    policy = load_policy("evals/classifier.yaml")
    assert policy.model == "classifier" and policy.metrics


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: clf\nmetrics: {accuracy: {minimum: 0.9}}", r"metrics\.accuracy\.minimum: Extra inputs"),
        ("model: clf\nmetrics: {accuracy: {}}", r"metrics\.accuracy: .*give 'min' or 'max'"),
        ("metrics: {}", r"model: Field required"),
        ("model: Bad Name", r"model: String should match pattern"),
        ("model: clf\ndrift: {max_psi: -1}", r"drift\.max_psi: Input should be greater than 0"),
        ("model: [", r"not valid YAML"),
    ],
)
def test_bad_policies_name_the_field(text, message):
    with pytest.raises(PolicyError, match=message):
        parse_policy(text, source="p.yaml")


def test_missing_policy_file():
    with pytest.raises(PolicyError, match="policy file not found"):
        load_policy("evals/nope.yaml")


def test_all_rules_pass_without_champion():
    decision = evaluate_gate(parse_policy(POLICY), GOOD)
    assert decision.passed, decision.summary()
    assert by_rule(decision)["regression.accuracy"].detail.startswith("no champion")


def test_threshold_failure_is_named_with_value_and_limit():
    decision = evaluate_gate(parse_policy(POLICY), dict(GOOD, accuracy=0.8, log_loss=0.5))
    assert not decision.passed
    assert {r.rule for r in decision.failed_rules} == {"metrics.accuracy.min", "metrics.log_loss.max"}
    assert "metrics.accuracy.min (measured 0.8, limit 0.9)" in decision.summary()


def test_unmeasured_metric_fails_rather_than_passing():
    scores = {k: v for k, v in GOOD.items() if k != "log_loss"}
    decision = evaluate_gate(parse_policy(POLICY), scores)
    assert [r.rule for r in decision.failed_rules] == ["metrics.log_loss.max"]


def test_regression_against_champion():
    policy = parse_policy(POLICY)
    ok = evaluate_gate(policy, GOOD, champion_scores={"accuracy": 0.96}, champion_version="v1")
    worse = evaluate_gate(policy, GOOD, champion_scores={"accuracy": 0.99}, champion_version="v1")
    assert ok.passed and ok.champion_version == "v1"
    assert [r.rule for r in worse.failed_rules] == ["regression.accuracy"]
    assert by_rule(worse)["regression.accuracy"].value == pytest.approx(0.04)


def test_fairness_gap_ignores_small_groups():
    policy = parse_policy(POLICY)
    groups = {"a": {"recall": 0.95}, "b": {"recall": 0.7}, "tiny": {"recall": 0.1}}
    unfair = evaluate_gate(policy, GOOD, group_scores=groups, group_sizes={"a": 50, "b": 50, "tiny": 3})
    assert [r.rule for r in unfair.failed_rules] == ["fairness.recall.gap"]
    assert by_rule(unfair)["fairness.recall.gap"].value == pytest.approx(0.25)
    fair = evaluate_gate(
        policy,
        GOOD,
        group_scores={"a": {"recall": 0.9}, "tiny": {"recall": 0.1}},
        group_sizes={"a": 50, "tiny": 3},
    )
    assert fair.passed


def test_drift_share_limit():
    columns = [
        ColumnDrift(column=c, kind="numeric", statistic="psi", value=v, threshold=0.2, drifted=v > 0.2)
        for c, v in (("x", 0.5), ("y", 0.01), ("z", 0.02))
    ]
    decision = evaluate_gate(
        parse_policy(POLICY),
        GOOD,
        evidence={"drift": DriftReport(columns=columns, drifted_share=1 / 3).model_dump()},
    )
    rule = by_rule(decision)["drift.training_drifted_share"]
    assert not rule.passed and "x" in rule.detail


def test_policy_version_is_content_addressed():
    assert parse_policy(POLICY).version() == parse_policy(POLICY).version()
    assert parse_policy(POLICY).version() != parse_policy(POLICY.replace("0.9}", "0.8}")).version()


def test_fairness_on_a_metric_no_group_has_fails():
    groups = {"a": {"recall": 0.9}, "b": {"recall": 0.9}}
    policy = parse_policy(POLICY.replace("metric: recall", "metric: recal"))
    decision = evaluate_gate(policy, GOOD, group_scores=groups, group_sizes={"a": 50, "b": 50})
    assert [r.rule for r in decision.failed_rules] == ["fairness.recal.gap"]


def test_non_numeric_scores_are_named():
    with pytest.raises(PolicyError, match=r"eval_scores.accuracy: expected a number"):
        evaluate_gate(parse_policy(POLICY), dict(GOOD, accuracy="high"))


def test_each_rule_without_its_input_is_decided_and_the_record_says_why():
    """Finding 10: the docstring said a missing input fails, but three rules passed silently.
    Now: a missing metric fails; a rule with nothing to compare with is marked not applied, with why."""
    policy = parse_policy(POLICY)
    assert policy.fairness is not None and policy.drift is not None and policy.regression
    decision = evaluate_gate(policy, GOOD)  # no champion, no groups, no drift report
    rules = by_rule(decision)
    not_applied = {r.rule for r in decision.not_applied}
    assert not_applied == {"regression.accuracy", "fairness.recall.gap", "drift.training_drifted_share"}
    assert all(rules[name].passed and rules[name].detail for name in not_applied)
    assert all(r.applied for r in decision.rules if r.rule.startswith("metrics."))
    assert "3 of them not applied" in decision.summary()
    assert "regression.accuracy (no champion yet: nothing to regress from)" in decision.summary()
    # a champion without the metric is no excuse: the regression rule is applied and fails
    missing = evaluate_gate(policy, GOOD, champion_scores={"f1": 0.9}, champion_version="v1")
    assert by_rule(missing)["regression.accuracy"].applied
    assert [r.rule for r in missing.failed_rules] == ["regression.accuracy"]
    # one group large enough: fairness not applied, and says so
    small = evaluate_gate(policy, GOOD, group_scores={"a": {"recall": 0.9}}, group_sizes={"a": 50})
    assert not by_rule(small)["fairness.recall.gap"].applied
    assert "fewer than 2 groups" in by_rule(small)["fairness.recall.gap"].detail


def test_champion_scored_has_one_shape():
    from llmops.gates import champion_scored

    assert champion_scored("v1", {"f1": 0.9}) == {"version": "v1", "scores": {"f1": 0.9}}
    with pytest.raises(ValueError, match="scores"):
        champion_scored("v1", {"f1": "high"})
