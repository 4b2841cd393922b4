"""The gate's online rules: champion and shadow rows paired on request_id, each rule passing,
failing with its value and limit, and not applied with its reason."""

from datetime import datetime, timedelta, timezone

import pytest

from llmops.gates import evaluate_gate, parse_policy
from llmops.inference_log import InferenceLogger
from llmops.online_rules import (
    OnlineRules,
    ShadowEvidence,
    judge_shadow,
    label_key,
    pair_rows,
    read_shadow_evidence,
)
from llmops.request_log import feedback_row, llm_request_row, rag_request_row

ANSWER = "Metaflow flows run steps in order and store artifacts for every step."


def rag_row(request_id, version, *, shadow=False, answer=ANSWER, score=0.8, total=100.0, status=200, **extra):
    row = rag_request_row(
        request_id=request_id, model="rag", model_version=version, route="/query",
        versions={"index": "idx-1"}, question="How do flows run?",
        sources=[{"source": "docs/overview.md", "chunk": 0, "score": score}], answer=answer,
        latency_ms={"retrieve": 10.0, "generate": total - 10, "total": total}, keep_text=True,
        status=status, low_confidence_below=0.3,
    )  # fmt: skip
    return row | ({"role": "shadow"} if shadow else {}) | extra


def rag_pairs(n, **shadow):
    """n requests: the champion v1's row and the challenger v2's shadow row of each."""
    return [
        row
        for i in range(n)
        for row in (rag_row(f"q{i}", "v1"), rag_row(f"q{i}", "v2", shadow=True, **shadow))
    ]


def evidence(rows, kind_labels=None):
    kind, pairs, unpaired, other = pair_rows(rows, "v1", "v2")
    return ShadowEvidence(model="rag", champion_version="v1", challenger_version="v2", kind=kind,
                          pairs=pairs, labels=kind_labels or {}, unpaired=unpaired,
                          other_versions=other)  # fmt: skip


def by_name(verdict):
    return {m.name: m for m in verdict.measures}


def test_rows_pair_on_request_id_kind_and_versions():
    rows = [
        *rag_pairs(3),
        rag_row("q9", "v2", shadow=True),  # its champion row is outside the window
        rag_row("q0", "v3", shadow=True),  # another challenger
        feedback_row(request_id="q0", model="rag", model_version="v1", rating=1),
    ]
    rows[0].pop("role")  # a row without role is the champion's
    kind, pairs, unpaired, other = pair_rows(rows, "v1", "v2")
    assert kind == "rag_request" and [c["request_id"] for c, _ in pairs] == ["q0", "q1", "q2"]
    assert all(c["model_version"] == "v1" and s["role"] == "shadow" for c, s in pairs)
    assert (unpaired, other) == (1, 1)
    assert "question" not in pairs[0][0] and pairs[0][1]["answer"] == ANSWER  # only what is measured


def test_every_rag_rule_passes_for_a_challenger_like_the_champion():
    verdict = judge_shadow(evidence(rag_pairs(30, total=120.0)), OnlineRules())
    measures = by_name(verdict)
    assert list(measures) == [
        *("shadowed_requests", "agreement", "groundedness_drop", "low_confidence_increase"),
        *("top_score_drop", "latency_p99_ratio", "error_rate_increase"),
    ]
    assert measures["agreement"].value == 1.0 and measures["latency_p99_ratio"].value == pytest.approx(1.2)
    assert measures["groundedness_drop"].status == "not applied"
    assert "both carry groundedness" in measures["groundedness_drop"].reason
    assert all(m.status == "passed" for n, m in measures.items() if n != "groundedness_drop")


@pytest.mark.parametrize(
    ("shadow", "name", "value", "limit"),
    [
        ({"answer": "Something else entirely about cooking pasta."}, "agreement", 0.0, 0.7),
        ({"score": 0.2}, "top_score_drop", 0.6, 0.05),
        ({"score": 0.2}, "low_confidence_increase", 1.0, 0.05),
        ({"total": 400.0}, "latency_p99_ratio", 4.0, 1.5),
        ({"status": 502, "answer": None}, "error_rate_increase", 1.0, 0.02),
        ({"groundedness": 0.2}, "groundedness_drop", 0.7, 0.05),
    ],
)
def test_each_rag_rule_fails_with_its_value_and_limit(shadow, name, value, limit):
    rows = rag_pairs(30, **shadow)
    if name == "groundedness_drop":
        for row in rows[::2]:
            row["groundedness"] = 0.9
    decision = evaluate_gate(
        parse_policy("model: rag\nonline: {}"), {}, evidence={"online": evidence(rows).model_dump()}
    )
    failed = {r.rule: r for r in decision.failed_rules}
    assert not decision.passed and f"online.{name}" in failed
    assert failed[f"online.{name}"].value == pytest.approx(value)
    assert failed[f"online.{name}"].limit == limit and failed[f"online.{name}"].detail
    assert f"online.{name} (measured" in decision.summary()


def test_the_agreement_of_reworded_answers_follows_their_overlap():
    reworded = "Metaflow flows run their steps in order, storing artifacts for every step."
    measures = by_name(judge_shadow(evidence(rag_pairs(30, answer=reworded)), OnlineRules()))
    assert measures["agreement"].value == 1.0
    strict = by_name(
        judge_shadow(evidence(rag_pairs(30, answer=reworded)), OnlineRules(agreement_overlap=1.0))
    )
    assert strict["agreement"].value == 0.0 and strict["agreement"].status == "failed"


def test_too_few_shadowed_requests_fail_the_gate_and_apply_no_other_rule():
    decision = evaluate_gate(
        parse_policy("model: rag\nonline: {min_requests: 30}"),
        {},
        evidence={"online": evidence(rag_pairs(12)).model_dump()},
    )
    rules = {r.rule: r for r in decision.rules}
    assert not decision.passed and [r.rule for r in decision.failed_rules] == ["online.shadowed_requests"]
    assert (rules["online.shadowed_requests"].value, rules["online.shadowed_requests"].limit) == (12, 30)
    skipped = [r for r in decision.rules if not r.applied]
    assert len(skipped) == 6 and all(r.passed for r in skipped)
    assert all("not enough traffic: 12 requests < min_requests 30" in r.detail for r in skipped)


def test_an_offline_gate_gets_no_online_rule():
    decision = evaluate_gate(parse_policy("model: rag\nonline: {}"), {}, evidence={"drift": None})
    assert decision.passed and decision.rules == []


def test_llm_pairs_get_agreement_latency_and_errors():
    def row(request_id, version, shadow=False, answer="Paris."):
        built = llm_request_row(
            request_id=request_id, model="llm", model_version=version, route="/v1/chat/completions",
            stream=False, prompt="Capital of France?", answer=answer, prompt_tokens=5, completion_tokens=2,
            finish_reason="stop", latency_ms={"first_token": 5.0, "total": 50.0}, keep_text=True,
        )  # fmt: skip
        return built | ({"role": "shadow"} if shadow else {})

    rows = [r for i in range(40) for r in (row(f"c{i}", "v1"), row(f"c{i}", "v2", True, "Lyon."))]
    measures = by_name(judge_shadow(evidence(rows), OnlineRules()))
    assert list(measures) == ["shadowed_requests", "agreement", "latency_p99_ratio", "error_rate_increase"]
    assert measures["agreement"].status == "failed" and "0 of 40 answers" in measures["agreement"].reason


def classifier_rows(n, flip_every=0):
    """One request of n records: the champion's predictions and the shadow's (every flip_every-th differs)."""
    rows = []
    for i in range(n):
        champion = {"request_id": "r1", "row": i, "timestamp": "2026-12-01T00:00:00+00:00", "model": "clf",
                    "model_version": "v1", "prediction": "a", "probability": 0.9}  # fmt: skip
        changed = flip_every and i % flip_every == 0
        rows += [
            champion,
            champion | {"model_version": "v2", "role": "shadow", "prediction": "b" if changed else "a"},
        ]
    return rows


def test_classifier_agreement_and_accuracy_on_labelled_pairs():
    rows = classifier_rows(40, flip_every=4)
    labels = {label_key("r1", i): "a" for i in range(20)}
    measures = by_name(judge_shadow(evidence(rows, labels), OnlineRules(min_agreement=0.7)))
    assert list(measures) == ["shadowed_requests", "agreement", "accuracy_drop"]
    assert measures["agreement"].value == 0.75 and measures["agreement"].status == "passed"
    assert (
        measures["accuracy_drop"].value == pytest.approx(0.25)
        and measures["accuracy_drop"].status == "failed"
    )
    few = by_name(judge_shadow(evidence(rows, dict(list(labels.items())[:3])), OnlineRules()))
    assert few["accuracy_drop"].status == "not applied"
    assert few["accuracy_drop"].reason == "3 labelled pairs < min_labels 10"


def test_evidence_is_read_from_the_log_window(tmp_path):
    now = datetime.now(timezone.utc)
    old = (now - timedelta(days=2)).isoformat()
    rows = rag_pairs(5)
    rows[0]["timestamp"] = rows[1]["timestamp"] = old  # q0 before the window
    logger = InferenceLogger(tmp_path, "rag", durable=True)
    logger.log(rows)
    found = read_shadow_evidence(tmp_path, "rag", "v1", "v2", since=(now - timedelta(hours=1)).isoformat())
    assert found.kind == "rag_request" and [c["request_id"] for c, _ in found.pairs] == [
        "q1",
        "q2",
        "q3",
        "q4",
    ]
    assert found.describe().startswith("4 shadowed requests (rag_request): champion v1, challenger v2")


def test_the_online_section_is_checked_like_any_field():
    from llmops.gates import PolicyError

    with pytest.raises(PolicyError, match=r"online.min_agreement: Input should be less than or equal to 1"):
        parse_policy("model: rag\nonline: {min_agreement: 2}")
    with pytest.raises(PolicyError, match=r"online\.max_p99"):
        parse_policy("model: rag\nonline: {max_p99: 2}")


@pytest.mark.parametrize("option", ["--since", "--until"])
def test_decide_refuses_a_bad_window_by_name_before_any_run(option, capsys):
    from llmops.cli import main

    assert main(["models", "decide", "rag", option, "yesterday"]) == 2
    assert f"{option}: 'yesterday' is not an ISO-8601 time" in capsys.readouterr().out
