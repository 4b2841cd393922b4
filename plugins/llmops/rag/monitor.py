"""The live RAG monitor: measures of a window of a release's inference log, and the verdict.

``flows/monitor_rag.py`` reads a window of ``rag_request`` and ``feedback`` rows
(:mod:`llmops.rag.monitor_sources` reads them and holds their models), gathers the references
(golden and last passing questions, the evaluation's top scores, the index's manifest) and calls
the measures here (the ones every monitor takes, and :class:`MonitorRules`, come from
:mod:`llmops.live_measures`):

    question_drift      MMD² permutation test of question embeddings (llmops.rag.question_drift)
    top_score_ks        two-sample KS test of the window's top retrieval scores vs the reference's
    low_confidence      share of answers retrieved with low confidence
    groundedness        mean lexical faithfulness of answers to their sources (no judge)
    judged_faithfulness mean ragas Faithfulness of a sample of answers, with an LLM judge
    negative_feedback   share of negative ratings, only past ``min_ratings`` ratings
    latency_p99_ms      p99 of ``latency_ms.total`` (p50 beside it)
    error_rate          share of requests answered with a status >= 500
    corpus_change       files of the docs folder new, changed or deleted against the index

:func:`decide` turns them into a :class:`MonitorVerdict`. Every measure says its value, its limit,
and whether it passed, failed or was not applied, and why. A window with fewer than
``min_requests`` requests is "not enough traffic" and never triggers anything.

:class:`MonitorRules` is the ``monitor:`` section of a RAG (or LLM) policy. Only pydantic is
imported at module level: every flow process parses its policy, and the numerics load where they
run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from llmops.errors import LlmopsError
from llmops.live_measures import (  # noqa: F401 (shared with the LLM monitor; re-exported)
    SERVER_ERROR,
    Measure,
    MonitorRules,
    Status,
    Verdict,
    judged,
    measure_feedback,
    measure_latency,
    not_applied,
)
from llmops.live_measures import decide as decide_verdict
from llmops.rag.monitor_sources import RagRequest

_judged = judged


class RereleaseError(LlmopsError, RuntimeError):
    """A run the monitor started to re-release (index or evaluation) that failed; holds its output."""


# ---- measures ------------------------------------------------------------------------------


def measure_question_drift(
    reference: Any, window: Any, questions: Sequence[str], rules: MonitorRules
) -> Measure:
    """``reference`` (n, d) and ``window`` (m, d) question embeddings of one embedder; the
    details hold the furthest questions and the 2-D map the card draws."""
    try:
        from llmops.rag.question_drift import drift_map, question_drift
    except ImportError:  # a package built before the statistic was added
        return not_applied(
            "question_drift", rules.question_alpha, "not measured: llmops.rag.question_drift is missing"
        )
    result = question_drift(
        reference,
        window,
        alpha=rules.question_alpha,
        permutations=rules.permutations,
        min_questions=rules.min_questions,
        questions=list(questions),
    )
    details = {
        "furthest": [f.model_dump() for f in result.furthest],
        "map": [p.model_dump() for p in drift_map(reference, window)],
        "statistic": result.statistic,
        "reference_size": result.reference_size,
        "window_size": result.window_size,
    }
    name, limit = "question_drift", rules.question_alpha
    if result.p_value is None:
        return not_applied(
            name,
            limit,
            f"{result.verdict}: {result.window_size} window and {result.reference_size} reference "
            f"questions, {rules.min_questions} needed on each side",
            **details,
        )
    text = (
        f"questions drifted: MMD² p-value {result.p_value:.3g} < {limit}"
        if result.drifted
        else f"questions as the reference's: MMD² p-value {result.p_value:.3g} >= {limit}"
    )
    return _judged(name, result.p_value, limit, result.drifted, text, **details)


def measure_top_scores(reference: Sequence[float], window: Sequence[float], rules: MonitorRules) -> Measure:
    """Two-sample KS test of the window's top retrieval scores against the reference's."""
    from scipy.stats import ks_2samp

    name, limit = "top_score_ks", rules.top_score_alpha
    details = {"reference": [float(s) for s in reference], "window": [float(s) for s in window]}
    if len(reference) < 2 or len(window) < 2:
        return not_applied(
            name, limit, f"{len(window)} window and {len(reference)} reference top scores", **details
        )
    result = ks_2samp(reference, window)
    p_value, statistic = float(result.pvalue), float(result.statistic)
    details["statistic"] = statistic
    failed = p_value < limit
    text = (
        f"top retrieval scores moved: KS D={statistic:.3f}, p-value {p_value:.3g} < {limit}"
        if failed
        else f"top retrieval scores as the reference's: KS p-value {p_value:.3g} >= {limit}"
    )
    return _judged(name, p_value, limit, failed, text, **details)


def measure_low_confidence(requests: Sequence[RagRequest], rules: MonitorRules) -> Measure:
    """Share of requests with ``low_confidence`` true, or (not logged) a top score below
    ``low_confidence_score``; requests without either are left out."""
    name, limit = "low_confidence", rules.max_low_confidence_share
    flags = []
    for request in requests:
        if request.low_confidence is not None:
            flags.append(request.low_confidence)
        elif (score := request.best_score()) is not None:
            flags.append(score < rules.low_confidence_score)
    if not flags:
        return not_applied(name, limit, "no request logged a top score or a confidence")
    share = sum(flags) / len(flags)
    text = f"{share:.0%} of {len(flags)} answers low-confidence (max {limit:.0%})"
    return _judged(name, share, limit, share > limit, text)


def measure_groundedness(
    pairs: Sequence[tuple[str, str]], rules: MonitorRules, missing: str = "no answer was logged"
) -> Measure:
    """Mean faithfulness (``llmops.llm.lm_eval.faithfulness``: share of an answer's sentences whose
    content words its sources hold) of (answer, sources' text) pairs; ``missing`` says why there
    are none (text logging off, no /query requests)."""
    from llmops.llm.lm_eval import faithfulness

    name, limit = "groundedness", rules.min_groundedness
    if not pairs:
        return not_applied(name, limit, f"not measured: {missing}")
    scores = [faithfulness(answer, context) for answer, context in pairs]
    mean = sum(scores) / len(scores)
    return _judged(
        name,
        mean,
        limit,
        mean < limit,
        f"answers grounded in their sources: {mean:.2f} on {len(scores)} answers (min {limit})",
        answers=len(scores),
    )


def measure_judged_faithfulness(
    scores: Sequence[float | None], rules: MonitorRules, missing: str = "", notes: Sequence[str] = ()
) -> Measure:
    """Mean ragas Faithfulness of the judged sample (one score per sampled answer, None where the
    judge could not score it, ``notes`` saying why); ``missing`` says why nothing was judged."""
    name, limit = "judged_faithfulness", rules.min_judged_faithfulness
    if missing:
        return not_applied(name, limit, f"not measured: {missing}")
    scored = [s for s in scores if s is not None]
    if not scored:
        why = f": {notes[0]}" if notes else ""
        return not_applied(
            name, limit, f"the judge scored none of {len(scores)} sampled answers{why}", notes=list(notes)
        )
    mean = sum(scored) / len(scored)
    text = f"judged faithfulness {mean:.2f} on {len(scored)} of {len(scores)} sampled answers (min {limit})"
    return _judged(name, mean, limit, mean < limit, text, answers=len(scored), notes=list(notes))


class CorpusChange(BaseModel):
    """Files of the docs folder against the index's manifest (source path -> content hash)."""

    new: list[str] = Field(default_factory=list)
    changed: list[str] = Field(default_factory=list)
    deleted: list[str] = Field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.new) + len(self.changed) + len(self.deleted)


def corpus_change(indexed: dict[str, str], current: dict[str, str]) -> CorpusChange:
    return CorpusChange(
        new=sorted(set(current) - set(indexed)),
        changed=sorted(p for p in set(current) & set(indexed) if current[p] != indexed[p]),
        deleted=sorted(set(indexed) - set(current)),
    )


def measure_corpus(change: CorpusChange | None, missing: str = "") -> Measure:
    """Any new, changed or deleted file fails: the served index no longer holds the corpus."""
    if change is None:
        return not_applied("corpus_change", 0, f"not measured: {missing}")
    parts = [f"{len(v)} {k}" for k, v in change.model_dump().items() if v]
    text = (
        f"the docs folder differs from the index: {', '.join(parts)}"
        if change.count
        else "the docs folder is the one indexed"
    )
    return _judged("corpus_change", change.count, 0, change.count > 0, text, **change.model_dump())


# ---- the verdict ---------------------------------------------------------------------------


MonitorVerdict = Verdict
TRAFFIC_FREE = frozenset({"corpus_change"})  # measured whatever the traffic


def rag_action(failed: list[Measure]) -> str:
    """``reindex-and-evaluate`` when the corpus changed, ``evaluate`` for any other failure."""
    return "reindex-and-evaluate" if any(m.name == "corpus_change" for m in failed) else "evaluate"


def decide(measures: Sequence[Measure], requests: int, ratings: int, rules: MonitorRules) -> Verdict:
    return decide_verdict(measures, requests, ratings, rules, rag_action, TRAFFIC_FREE)
