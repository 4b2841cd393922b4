"""The gate's online rules: a challenger that shadowed the champion, judged on the same requests.

A service with a challenger answers each sampled request twice: the champion's answer goes back,
the challenger's is only logged. Both rows have the request's ``kind`` and ``request_id``; the
challenger's says ``role: shadow`` (a row without ``role`` is the champion's). The evidence of a
window is every pair of a champion row and the challenger's shadow row of the same request
(:func:`read_shadow_evidence`); the ``online:`` section of the policy (:class:`OnlineRules`) turns
it into gate rules, one per measure:

    shadowed_requests        pairs in the window; under ``min_requests`` the gate fails and every
                             other online rule is "not applied" (not enough traffic)
    agreement                share of pairs that answered alike: the same prediction (classifier),
                             the same answer or answers whose content words overlap (RAG, LLM)
    groundedness_drop        RAG: champion minus challenger mean groundedness, where rows carry it
    low_confidence_increase  RAG: challenger minus champion share of low-confidence answers
    top_score_drop           RAG: champion minus challenger mean top retrieval score
    latency_p99_ratio        RAG, LLM: challenger p99 over champion p99 of ``latency_ms.total``
    error_rate_increase      RAG, LLM: challenger minus champion share of 5xx answers
    accuracy_drop            classifier: champion minus challenger accuracy on the labelled pairs

The measures and the verdict are :mod:`llmops.live_measures`' (``judged``, ``not_applied``,
``decide``): a policy without evidence of shadow traffic (an offline evaluation) gets no online
rules. Rows are read duck-typed, so the classifier's rows (no ``kind``) and both services' fit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from llmops.gates import PolicySection, RuleResult
from llmops.inference_log import SHADOW_ROLE, row_role
from llmops.live_measures import SERVER_ERROR, Measure, Verdict, decide, judged, not_applied
from llmops.request_log import FEEDBACK, RAG_REQUEST, read_rows
from llmops.text import terms

CHALLENGER = "challenger"  # the registry alias of the version that shadows the champion
PREDICTION = "prediction"  # the evidence's kind for the classifier's rows (they have no ``kind``)
TRAFFIC = "shadowed_requests"
# what the measures read of a row (the evidence is an artifact: no features, questions or prompts)
PAIRED_FIELDS = frozenset({"kind", "request_id", "row", "timestamp", "model_version", "role", "route",
                           "status", "prediction", "answer", "answer_sha256", "sources", "top_score",
                           "low_confidence", "groundedness", "latency_ms"})  # fmt: skip


class OnlineRules(PolicySection):
    """The ``online:`` section of a policy: limits on a challenger's shadow traffic against the
    champion's answers to the same requests (``llmops models decide``).

    Parameters
    ----------
    min_requests : int
        Fewer shadowed requests in the window: the gate fails, the other online rules are not applied.
    min_agreement : float
        Least share of the pairs that answered alike.
    agreement_overlap : float
        RAG, LLM: two different answers agree when the F1 of their content words reaches this.
    max_groundedness_drop, max_low_confidence_increase, max_top_score_drop : float
        RAG: how much worse than the champion the challenger may be on each.
    max_latency_ratio : float
        Largest challenger p99 latency as a multiple of the champion's.
    max_error_rate_increase : float
        Largest rise of the share of 5xx answers.
    max_accuracy_drop : float
        Classifier: largest fall of accuracy on the pairs whose label came back.
    min_labels : int
        The accuracy rule counts only with at least this many labelled pairs.
    """

    min_requests: int = Field(default=30, ge=1)
    min_agreement: float = Field(default=0.7, ge=0, le=1)
    agreement_overlap: float = Field(default=0.5, gt=0, le=1)
    max_groundedness_drop: float = Field(default=0.05, ge=0, le=1)
    max_low_confidence_increase: float = Field(default=0.05, ge=0, le=1)
    max_top_score_drop: float = Field(default=0.05, ge=0, le=2)
    max_latency_ratio: float = Field(default=1.5, gt=0)
    max_error_rate_increase: float = Field(default=0.02, ge=0, le=1)
    max_accuracy_drop: float = Field(default=0.02, ge=0, le=1)
    min_labels: int = Field(default=10, ge=1)

    def gate_rules(self, evidence: Mapping[str, Any]) -> list[RuleResult]:
        """``online.*`` from ``evidence["online"]`` (a :class:`ShadowEvidence` dump); none without it."""
        online = evidence.get("online")
        if not online:
            return []
        verdict = judge_shadow(ShadowEvidence.model_validate(online), self)
        return [rule_result(m) for m in verdict.measures]


class ShadowEvidence(BaseModel):
    """The pairs of a window: (champion row, shadow row) of each request both answered."""

    model: str
    champion_version: str
    challenger_version: str
    since: str | None = None
    until: str | None = None
    kind: str  # rag_request, llm_request or prediction (the classifier's)
    pairs: list[tuple[dict[str, Any], dict[str, Any]]]
    labels: dict[str, str] = Field(default_factory=dict)  # "request_id/row" -> label (classifier)
    unpaired: int = 0  # the challenger's shadow rows whose champion row is not in the window
    other_versions: int = 0  # shadow rows of another challenger, champion rows of another champion

    def describe(self) -> str:
        extra = [
            f"{self.unpaired} shadow rows without their champion row" if self.unpaired else "",
            f"{self.other_versions} rows of other versions left out" if self.other_versions else "",
        ]
        labelled = f", {len(self.labels)} labels" if self.labels else ""
        return (
            f"{len(self.pairs)} shadowed {'records' if self.kind == PREDICTION else 'requests'} "
            f"({self.kind}{labelled}): champion "
            f"{self.champion_version}, challenger {self.challenger_version}"
            + "".join(f"; {e}" for e in extra if e)
        )


def label_key(request_id: Any, row: Any) -> str:
    return f"{request_id}/{int(row or 0)}"


def pair_rows(
    rows: Iterable[Mapping[str, Any]], champion_version: str, challenger_version: str
) -> tuple[str, list[tuple[dict[str, Any], dict[str, Any]]], int, int]:
    """(kind, pairs, unpaired, other versions) of log ``rows``: each shadow row of the challenger
    with the champion's row of the same kind, ``request_id`` and ``row``, in the shadow rows'
    order. The kind is the pairs' most common one (a model's log holds one service's rows)."""
    champions: dict[tuple[Any, str, int], dict[str, Any]] = {}
    shadows: dict[tuple[Any, str, int], dict[str, Any]] = {}
    other = 0
    for row in rows:
        if row.get("kind") == FEEDBACK or not row.get("request_id"):
            continue
        key = (row.get("kind"), str(row["request_id"]), int(row.get("row") or 0))
        shadow = row_role(row) == SHADOW_ROLE
        wanted = challenger_version if shadow else champion_version
        if row.get("model_version") != wanted:
            other += 1
            continue
        kept = {k: v for k, v in row.items() if k in PAIRED_FIELDS}
        (shadows if shadow else champions).setdefault(key, kept)  # a retried write counts once
    pairs = [(champions[k], s) for k, s in shadows.items() if k in champions]
    kinds = [c.get("kind") or PREDICTION for c, _ in pairs]
    kind = max(set(kinds), key=kinds.count) if kinds else PREDICTION
    pairs = [(c, s) for c, s in pairs if (c.get("kind") or PREDICTION) == kind]
    return kind, pairs, len(shadows) - len(pairs), other


def read_shadow_evidence(
    root: Path | str | None,
    model: str,
    champion_version: str,
    challenger_version: str,
    since: str | None = None,
    until: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> ShadowEvidence:
    """The pairs of ``model``'s log (``root``: a folder or ``s3://``, default the log root) with
    ``since <= timestamp < until``; ``labels`` (``label_key`` -> label) for the classifier."""
    rows = read_rows(root, model, since, until)
    kind, pairs, unpaired, other = pair_rows(rows, champion_version, challenger_version)
    keys = {label_key(c["request_id"], c.get("row")) for c, _ in pairs}
    return ShadowEvidence(model=model, champion_version=champion_version,
                          challenger_version=challenger_version, since=since, until=until, kind=kind,
                          pairs=pairs, labels={k: str(v) for k, v in (labels or {}).items() if k in keys},
                          unpaired=unpaired, other_versions=other)  # fmt: skip


# ---- measures -----------------------------------------------------------------------------


def overlap_f1(a: str, b: str) -> float:
    """F1 of the content words (``llmops.text.terms``, with repeats) two answers share."""
    left, right = terms(a), terms(b)
    if not left or not right:
        return float(left == right)
    counts: dict[str, int] = {}
    for t in left:
        counts[t] = counts.get(t, 0) + 1
    common = 0
    for t in right:
        if counts.get(t, 0) > 0:
            counts[t] -= 1
            common += 1
    return 2 * common / (len(left) + len(right))


def _answered(row: Mapping[str, Any]) -> bool:
    return int(row.get("status") or 200) < 400 and row.get("answer_sha256") is not None


def measure_agreement(evidence: ShadowEvidence, rules: OnlineRules) -> Measure:
    name, limit = "agreement", rules.min_agreement
    if evidence.kind == PREDICTION:
        both = [(c, s) for c, s in evidence.pairs if c.get("prediction") is not None]
        same = sum(str(c["prediction"]) == str(s.get("prediction")) for c, s in both)
        what = "predictions"
    else:
        both = [(c, s) for c, s in evidence.pairs if _answered(c) and _answered(s)]
        same = sum(_same_answer(c, s, rules.agreement_overlap) for c, s in both)
        what = f"answers (same, or content-word F1 >= {rules.agreement_overlap})"
    if not both:
        return not_applied(name, limit, "no request that both answered")
    share = same / len(both)
    text = f"{same} of {len(both)} {what} agree ({share:.0%}, min {limit:.0%})"
    return judged(name, round(share, 6), limit, share < limit, text, pairs=len(both))


def _same_answer(champion: Mapping[str, Any], shadow: Mapping[str, Any], overlap: float) -> bool:
    if champion["answer_sha256"] == shadow["answer_sha256"]:
        return True
    texts = champion.get("answer"), shadow.get("answer")
    return None not in texts and overlap_f1(*texts) >= overlap


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _compared(
    evidence: ShadowEvidence,
    name: str,
    limit: float,
    read: Callable[[Mapping[str, Any]], float | None],
    what: str,
    worse: Callable[[float, float], float],
    fmt: str = ".3f",
) -> Measure:
    """A measure of ``read(row)`` on both sides of the pairs where both rows hold it: its value is
    ``worse(champion mean, challenger mean)``, failed above ``limit``."""
    values = [(a, b) for c, s in evidence.pairs if (a := read(c)) is not None and (b := read(s)) is not None]
    if not values:
        return not_applied(name, limit, f"no pair whose rows both carry {what}")
    champion, challenger = _mean([a for a, _ in values]), _mean([b for _, b in values])
    value = round(worse(champion, challenger), 6)
    text = (
        f"{what}: champion {champion:{fmt}}, challenger {challenger:{fmt}} on {len(values)} requests "
        f"({value:+{fmt}}, max {limit:{fmt}})"
    )
    return judged(name, value, limit, value > limit, text, champion=champion, challenger=challenger)


def _number(field: str) -> Callable[[Mapping[str, Any]], float | None]:
    def read(row: Mapping[str, Any]) -> float | None:
        found = row.get(field)
        return None if found is None or isinstance(found, str) else float(found)

    return read


def measure_latency_ratio(evidence: ShadowEvidence, rules: OnlineRules) -> Measure:
    import numpy as np

    name, limit = "latency_p99_ratio", rules.max_latency_ratio
    totals = [
        (a, b)
        for c, s in evidence.pairs
        if (a := (c.get("latency_ms") or {}).get("total")) is not None
        and (b := (s.get("latency_ms") or {}).get("total")) is not None
    ]
    if not totals:
        return not_applied(name, limit, "no pair whose rows both carry latency_ms.total")
    champion = float(np.percentile([a for a, _ in totals], 99))
    challenger = float(np.percentile([b for _, b in totals], 99))
    if champion <= 0:
        return not_applied(name, limit, "the champion's p99 latency is 0 ms")
    ratio = round(challenger / champion, 6)
    text = (
        f"p99 latency: champion {champion:.0f} ms, challenger {challenger:.0f} ms "
        f"({ratio:.2f}x, max {limit:.2f}x)"
    )
    return judged(name, ratio, limit, ratio > limit, text, champion=champion, challenger=challenger)


def measure_error_rate(evidence: ShadowEvidence, rules: OnlineRules) -> Measure:
    name, limit = "error_rate_increase", rules.max_error_rate_increase
    if not evidence.pairs:
        return not_applied(name, limit, "no shadowed request")

    def rate(side: int) -> float:
        return _mean([int(p[side].get("status") or 200) >= SERVER_ERROR for p in evidence.pairs])

    champion, challenger = rate(0), rate(1)
    value = round(challenger - champion, 6)
    text = (
        f"5xx answers: champion {champion:.1%}, challenger {challenger:.1%} of {len(evidence.pairs)} "
        f"requests ({value:+.1%}, max {limit:.1%})"
    )
    return judged(name, value, limit, value > limit, text, champion=champion, challenger=challenger)


def measure_accuracy(evidence: ShadowEvidence, rules: OnlineRules) -> Measure:
    name, limit = "accuracy_drop", rules.max_accuracy_drop
    truth = [
        (label, c.get("prediction"), s.get("prediction"))
        for c, s in evidence.pairs
        if (label := evidence.labels.get(label_key(c["request_id"], c.get("row")))) is not None
    ]
    if len(truth) < rules.min_labels:
        return not_applied(
            name, limit, f"{len(truth)} labelled pairs < min_labels {rules.min_labels}", labels=len(truth)
        )
    champion = _mean([str(c) == label for label, c, _ in truth])
    challenger = _mean([str(s) == label for label, _, s in truth])
    value = round(champion - challenger, 6)
    text = (
        f"accuracy on {len(truth)} labelled records: champion {champion:.3f}, challenger "
        f"{challenger:.3f} ({value:+.3f}, max {limit:.3f})"
    )
    return judged(name, value, limit, value > limit, text, champion=champion, challenger=challenger)


def measure_shadow(evidence: ShadowEvidence, rules: OnlineRules) -> list[Measure]:
    """Every online measure of the evidence's kind, the traffic first."""
    count, least = len(evidence.pairs), rules.min_requests
    text = f"{count} shadowed {'records' if evidence.kind == PREDICTION else 'requests'} (min {least})"
    measures = [judged(TRAFFIC, count, least, count < least, text), measure_agreement(evidence, rules)]
    if evidence.kind == PREDICTION:
        return [*measures, measure_accuracy(evidence, rules)]
    if evidence.kind == RAG_REQUEST:
        measures += [
            _compared(evidence, "groundedness_drop", rules.max_groundedness_drop,
                      _number("groundedness"), "groundedness", lambda a, b: a - b),
            _compared(evidence, "low_confidence_increase", rules.max_low_confidence_increase,
                      _flag("low_confidence"), "low-confidence share", lambda a, b: b - a, ".1%"),
            _compared(evidence, "top_score_drop", rules.max_top_score_drop,
                      _number("top_score"), "mean top retrieval score", lambda a, b: a - b),
        ]  # fmt: skip
    return [*measures, measure_latency_ratio(evidence, rules), measure_error_rate(evidence, rules)]


def _flag(field: str) -> Callable[[Mapping[str, Any]], float | None]:
    def read(row: Mapping[str, Any]) -> float | None:
        found = row.get(field)
        return None if found is None else float(bool(found))

    return read


def judge_shadow(evidence: ShadowEvidence, rules: OnlineRules) -> Verdict:
    """The verdict of the window: under ``min_requests`` pairs the traffic rule fails and the other
    measures are not applied (``llmops.live_measures.decide``)."""
    labelled = len(evidence.labels)
    return decide(measure_shadow(evidence, rules), len(evidence.pairs), labelled, rules,
                  action=lambda failed: "keep the champion", traffic_free=frozenset({TRAFFIC}))  # fmt: skip


def rule_result(measure: Measure) -> RuleResult:
    """A measure as the gate's rule ``online.<name>``: a measure not applied passes, saying why."""
    return RuleResult(rule=f"online.{measure.name}", value=measure.value, limit=measure.limit,
                      passed=measure.status != "failed", applied=measure.status != "not applied",
                      detail=measure.reason)  # fmt: skip
