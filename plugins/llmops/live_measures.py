"""Measures of a served release's live traffic that every monitor shares, and their limits.

The RAG monitor (:mod:`llmops.rag.monitor`) and the LLM monitor (:mod:`llmops.llm.monitor`) judge
a window of their service's inference log against the ``monitor:`` section of the release's
policy (:class:`MonitorRules`, one section for both: each monitor reads the fields it measures).
What does not depend on the pipeline lives here: the :class:`Measure` every monitor reports,
negative feedback past ``min_ratings``, latency p99 and the share of 5xx answers. The rows are
read duck-typed (``rating``; ``latency_ms`` and ``status``), so either service's rows fit.

Only pydantic is imported at module level: every flow process parses its policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from llmops.gates import PolicySection

Status = Literal["passed", "failed", "not applied"]
SERVER_ERROR = 500


class MonitorRules(PolicySection):
    """The ``monitor:`` section of a RAG or an LLM policy: the live monitor's limits.

    Parameters
    ----------
    min_requests : int
        Fewer requests in the window: "not enough traffic", no verdict, no trigger.
    question_alpha : float
        The questions (RAG) or prompts (LLM) drifted when the permutation p-value is below it.
    permutations, min_questions : int
        Of the drift test (``llmops.rag.question_drift``).
    top_score_alpha : float
        RAG: the top retrieval scores drifted when the KS p-value is below it.
    low_confidence_score : float
        RAG: a request whose row does not say ``low_confidence`` counts as low-confidence when its
        top score is below this.
    max_low_confidence_share, min_groundedness : float
        RAG only.
    min_judged_faithfulness : float
        RAG, with a judge (``--judge-url``): mean ragas Faithfulness of the judged sample.
    max_negative_share, max_latency_p99_ms, max_error_rate : float
        Limits of the measures both monitors take.
    max_ttft_p99_ms, max_length_share : float
        LLM: p99 of the time to the first token, share of answers cut by the length limit.
    min_ratings : int
        The negative share counts only with at least this many ratings in the window.
    retrain : bool
        Start the re-release (RAG: re-index and evaluate; LLM: fine-tune) when the verdict asks.
    """

    min_requests: int = Field(default=30, ge=1)
    question_alpha: float = Field(default=0.01, gt=0, lt=1)
    permutations: int = Field(default=500, ge=1)
    min_questions: int = Field(default=20, ge=2)
    top_score_alpha: float = Field(default=0.01, gt=0, lt=1)
    low_confidence_score: float = Field(default=0.3, ge=-1, le=1)
    max_low_confidence_share: float = Field(default=0.3, ge=0, le=1)
    min_groundedness: float = Field(default=0.5, ge=0, le=1)
    min_judged_faithfulness: float = Field(default=0.7, ge=0, le=1)
    max_negative_share: float = Field(default=0.3, ge=0, le=1)
    min_ratings: int = Field(default=10, ge=1)
    max_latency_p99_ms: float = Field(default=5000.0, gt=0)
    max_ttft_p99_ms: float = Field(default=2000.0, gt=0)
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    max_length_share: float = Field(default=0.2, ge=0, le=1)
    retrain: bool = False


class Traffic(Protocol):
    """Rules with a traffic floor (the ``online:`` section's is on shadowed requests)."""

    min_requests: int


class Measure(BaseModel):
    """One measure of the window: its value against its limit, and why it passed or failed or
    why it was not applied."""

    name: str
    value: float | None
    limit: float | None
    status: Status
    reason: str
    details: dict[str, Any] = Field(default_factory=dict)


class Rating(BaseModel):
    """A ``feedback`` row as a monitor reads it (the latest per request id counts)."""

    model_config = ConfigDict(extra="ignore")

    request_id: str
    timestamp: str
    rating: Literal[1, -1]
    correction: str | None = None
    comment: str | None = None


class Verdict(BaseModel):
    """Every measure, the reasons (one per failed measure, or why none applies) and the action
    the pipeline's monitor takes for its failed measures."""

    requests: int
    ratings: int
    min_requests: int
    enough_traffic: bool
    measures: list[Measure]
    reasons: list[str]
    action: str
    summary: str

    def measure(self, name: str) -> Measure:
        return next(m for m in self.measures if m.name == name)


def decide(
    measures: Sequence[Measure],
    requests: int,
    ratings: int,
    rules: Traffic,
    action: Callable[[list[Measure]], str],
    traffic_free: frozenset[str] = frozenset(),
) -> Verdict:
    """The verdict of a window: ``action(failed measures)`` names what to do, except that a window
    under ``min_requests`` triggers nothing (its traffic measures are shown as not applied; the
    ``traffic_free`` ones, measured whatever the traffic, keep their status)."""
    enough = requests >= rules.min_requests
    short = f"not enough traffic: {requests} requests < min_requests {rules.min_requests}"
    if not enough:
        measures = [
            m
            if m.name in traffic_free
            else m.model_copy(update={"status": "not applied", "reason": f"{short} ({m.reason})"})
            for m in measures
        ]
    failed = [m for m in measures if m.status == "failed"]
    reasons = [f"{m.name}: {m.reason}" for m in failed]
    if enough:
        chosen = action(failed) if failed else "none"
        summary = "; ".join(reasons) or "every measure within the policy"
    else:
        chosen = "none"
        reasons.insert(0, short)
        names = ", ".join(m.name for m in failed)
        summary = short + (f" ({names} failed; nothing is triggered)" if failed else "")
    return Verdict(requests=requests, ratings=ratings, min_requests=rules.min_requests,
                   enough_traffic=enough, measures=list(measures), reasons=reasons, action=chosen,
                   summary=summary)  # fmt: skip


def not_applied(name: str, limit: float | None, reason: str, **details: Any) -> Measure:
    return Measure(name=name, value=None, limit=limit, status="not applied", reason=reason, details=details)


def judged(name: str, value: float, limit: float, failed: bool, text: str, **details: Any) -> Measure:
    status: Status = "failed" if failed else "passed"
    return Measure(name=name, value=value, limit=limit, status=status, reason=text, details=details)


def measure_feedback(feedback: Sequence[Any], rules: MonitorRules) -> Measure:
    """Share of ratings that are -1 (one per request id: the latest), past ``min_ratings``."""
    name, limit = "negative_feedback", rules.max_negative_share
    ratings, negative = len(feedback), sum(f.rating < 0 for f in feedback)
    if ratings < rules.min_ratings:
        return not_applied(
            name, limit, f"{ratings} ratings < min_ratings {rules.min_ratings}", ratings=ratings
        )
    share = negative / ratings
    text = f"{negative} of {ratings} ratings negative ({share:.0%}, max {limit:.0%})"
    return judged(name, share, limit, share > limit, text, ratings=ratings)


def measure_p99(name: str, values: Sequence[float], limit: float, what: str) -> Measure:
    """p99 (p50 in the details) of milliseconds ``values``, failed above ``limit``."""
    import numpy as np

    if not values:
        return not_applied(name, limit, f"no request logged {what}")
    p50, p99 = (float(v) for v in np.percentile(values, [50, 99]))
    text = f"{what} p50 {p50:.0f} ms, p99 {p99:.0f} ms (max {limit:.0f})"
    return judged(name, p99, limit, p99 > limit, text, p50=p50, requests=len(values))


def measure_latency(requests: Sequence[Any], rules: MonitorRules) -> list[Measure]:
    """p99 of ``latency_ms.total`` (p50 in the details) and the share of 5xx answers."""
    totals = [t for r in requests if (t := r.latency_ms.get("total")) is not None]
    latency = measure_p99("latency_p99_ms", totals, rules.max_latency_p99_ms, "latency_ms.total")
    if latency.status != "not applied":  # the RAG monitor's wording, which its docs quote
        latency.reason = latency.reason.replace("latency_ms.total p50", "latency p50")
    return [latency, measure_error_rate(requests, rules)]


def measure_error_rate(requests: Sequence[Any], rules: MonitorRules) -> Measure:
    errors = sum(r.status >= SERVER_ERROR for r in requests)
    limit = rules.max_error_rate
    if not requests:
        return not_applied("error_rate", limit, "no requests")
    rate = errors / len(requests)
    text = f"{errors} of {len(requests)} requests answered 5xx ({rate:.1%}, max {limit:.1%})"
    return judged("error_rate", rate, limit, rate > limit, text)
