"""Which generator a RAG release uses, decided on evidence: every candidate answers the same
golden questions from the same retrieved contexts, and the best one under the gate policy wins.

Candidates (``--generators`` of flows/evaluate_rag.py, comma-separated):

    extractive          always available: the floor every other candidate must beat
    base                the shipped base LLM (SmolLM2-135M-Instruct) when it is installed
    champion            the champion of the fine-tuned LLM release (flows/finetune_llm.py) when
                        there is one and it holds merged weights (finetune with --merge)
    transformers:/dir   any local model folder; openai:http://host:port/v1#model any endpoint

A candidate that fails an absolute metric rule of the policy is out. Among the rest the highest
``(answer_key, rouge_l)`` wins: key facts stated first, then overlap with the reference answer.
An LLM candidate wins only when it scores strictly above the extractive one, because the
extractive answer costs nothing to serve and never invents a sentence.

Early elimination. The extractive candidate answers every question first (it costs seconds); an
LLM candidate then answers in rounds on growing subsets of the golden set (``rounds``: 6, then 12,
then all), taken in a random order seeded by the golden set's version. After each round but the
last, :func:`stopping` bounds from above the candidate's full-set mean of each metric that decides
it, from the questions answered so far:

    exact     (sum so far + one per question left) / N: the left ones count at best 1.0
    sampled   mean so far + sqrt((1 - (n - 1) / N) * ln(1 / delta) / (2 n)), Hoeffding's bound
              with Serfling's correction for drawing n of N without replacement

and keeps the smaller. ``delta`` is ``1 - confidence`` shared out over the looks and the metrics
(a union bound), so at ``confidence`` 0.95 a candidate whose full-set mean would reach the limit
is stopped with probability at most 5 % over the draw of the order. A candidate stops when the
bound of its ``answer_key`` is below the extractive candidate's full-set ``answer_key`` (it cannot
rank above the floor) or the bound of a metric the policy gives a ``min`` is below that ``min``
(it cannot pass). Survivors answer the whole set; stopped ones are never chosen.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from llmops.errors import LlmopsError
from llmops.gates import GatePolicy, evaluate_gate

BASE_MODEL = "smollm2-135m-instruct"
RANKED_BY = ("answer_key", "rouge_l")
DEFAULT_ROUNDS = (6, 12)  # questions answered before each look; the last round is the whole set
DEFAULT_CONFIDENCE = 0.95
# the answer metrics a candidate changes (the retrieved contexts are the same for all), each in [0, 1]
BOUNDED_METRICS = ("answer_key", "string_similarity", "rouge_l", "faithfulness", "answer_relevancy")


class CandidateError(LlmopsError, ValueError):
    """A --generators value that names nothing usable; says which entry."""


def resolve_candidates(spec: str, llm_release: str = "llm") -> tuple[list[dict[str, str]], list[str]]:
    """[{"name", "spec"}] for the candidates of ``spec`` that exist here (extractive first), and a
    note for each named one that is not available (so a laptop without the base model still runs)."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise CandidateError("--generators: name at least one generator (e.g. extractive)")
    found: list[dict[str, str]] = [{"name": "extractive", "spec": "extractive"}]
    notes: list[str] = []
    for name in names:
        if name == "extractive":
            continue
        if name == "base":
            path, why = _base_model_path()
        elif name == "champion":
            path, why = _llm_champion_path(llm_release)
        elif name.startswith(("transformers:", "openai:")):
            found.append({"name": name.split("#")[0], "spec": name})
            continue
        else:
            raise CandidateError(
                f"--generators: {name!r} is not a generator (use extractive, base, champion, "
                "transformers:/model/folder or openai:http://host:port/v1#model)"
            )
        if path:
            found.append({"name": name, "spec": f"transformers:{path}"})
        else:
            notes.append(f"{name}: not evaluated ({why})")
    return found, notes


def _base_model_path() -> tuple[str | None, str]:
    try:
        from llmops.llm.base_models import resolve_base_model
    except ImportError:
        return None, f"the base model {BASE_MODEL} is not part of this installation"
    try:
        return str(resolve_base_model(BASE_MODEL).path), ""
    except Exception as exc:  # not installed here: evaluate the other candidates
        return None, f"{BASE_MODEL} cannot be resolved: {exc}"


def _llm_champion_path(name: str) -> tuple[str | None, str]:
    from llmops.llm.release import served_model
    from llmops.registry import Registry

    version = Registry().find(name)
    if version is None:
        return None, f"no champion of {name!r} yet"
    served = served_model(version)
    if served.adapter is not None:
        return None, f"{version.tag} is an adapter without merged weights (fine-tune with --merge)"
    return served.model, ""


def choose_generator(candidates: list[dict[str, Any]], policy: GatePolicy) -> tuple[int, str]:
    """Index of the winning candidate (each has "name" and "scores"; candidate 0 is extractive)
    and a sentence saying why."""
    absolute = policy.model_copy(update={"regression": {}})  # vs the champion: the gate's own job

    def passes(scores: dict[str, float]) -> bool:
        return evaluate_gate(absolute, scores).passed

    def rank(scores: dict[str, float]) -> tuple[float, ...]:
        return tuple(float(scores.get(m, 0.0)) for m in RANKED_BY)

    best = 0
    for i, candidate in enumerate(candidates[1:], 1):
        if candidate.get("stopped"):  # stopped early: scores of a part of the set, it cannot win
            continue
        if passes(candidate["scores"]) and rank(candidate["scores"]) > rank(candidates[best]["scores"]):
            best = i
    floor = candidates[0]
    if best == 0:
        why = "no other candidate passed the policy and scored above it"
        return 0, f"{floor['name']} chosen: {why}" if len(
            candidates
        ) > 1 else f"{floor['name']}: the only one"
    winner = candidates[best]
    gains = ", ".join(
        f"{m} {winner['scores'].get(m, 0):.3f} vs {floor['scores'].get(m, 0):.3f}" for m in RANKED_BY
    )
    return best, f"{winner['name']} chosen over {floor['name']}: {gains}"


def parse_rounds(text: str, field: str = "--rounds") -> tuple[int, ...]:
    """Round sizes from ``"6,12"`` (growing, each at least 1); ``""`` or ``"none"``: no early
    stop, every candidate answers the whole set at once."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise CandidateError(
            f"{field}: expected growing question counts such as 6,12, got {text!r}"
        ) from None
    if any(n < 1 for n in sizes) or any(b <= a for a, b in itertools.pairwise(sizes)):
        raise CandidateError(f"{field}: counts must be 1 or more and growing, got {text!r}")
    return sizes


def check_confidence(confidence: float, field: str = "--confidence") -> float:
    if not 0.5 <= confidence < 1.0:
        raise CandidateError(f"{field}: must be at least 0.5 and below 1, got {confidence}")
    return confidence


def round_schedule(total: int, rounds: Sequence[int] = DEFAULT_ROUNDS) -> list[int]:
    """Questions answered by the end of each round: the sizes below ``total``, then ``total``."""
    return [n for n in rounds if n < total] + [total]


def answer_order(total: int, seed: str) -> list[int]:
    """The question indices in the order rounds take them: a permutation seeded by ``seed`` (the
    golden set's version), so a subset is a random sample and a rerun takes the same one."""
    order = list(range(total))
    random.Random(seed).shuffle(order)
    return order


def mean_upper_bound(values: Sequence[float], total: int, delta: float) -> float:
    """An upper bound on the mean of ``total`` values in [0, 1] from the first ``len(values)`` of a
    random order: the smaller of the exact bound (the rest at 1.0) and Hoeffding-Serfling's, which
    holds with probability at least ``1 - delta``."""
    n = len(values)
    if n == 0:
        return 1.0
    left = max(total - n, 0)
    exact = (sum(values) + left) / (n + left)
    if left == 0:
        return exact
    spread = math.sqrt((1 - (n - 1) / total) * math.log(1 / delta) / (2 * n))
    return min(exact, sum(values) / n + spread)


class Stop(BaseModel):
    """Why a candidate stopped early: after which round, on which metric, its bound and the limit."""

    round: int
    answered: int
    total: int
    metric: str
    bound: float
    limit: float
    against: str  # "extractive floor" or "policy min"
    confidence: float

    def sentence(self, name: str) -> str:
        return (
            f"{name} stopped after round {self.round} ({self.answered}/{self.total} answered): "
            f"{self.metric} at most {self.bound:.3f} at {self.confidence:.0%} confidence, "
            f"below the {self.against} {self.limit:.3f}"
        )


def limits(floor_scores: dict[str, float], policy: GatePolicy) -> list[tuple[str, float, str]]:
    """(metric, limit, against) a candidate must be able to reach: the extractive floor's
    ``answer_key`` (ranked first) and each ``min`` the policy sets on a bounded answer metric."""
    found = []
    if "answer_key" in floor_scores:
        found.append(("answer_key", float(floor_scores["answer_key"]), "extractive floor"))
    for metric, threshold in policy.metrics.items():
        if metric in BOUNDED_METRICS and threshold.min is not None and metric not in policy.lower_is_better:
            found.append((metric, float(threshold.min), "policy min"))
    return found


def stopping(
    rows: Sequence[dict[str, float | None]],
    total: int,
    checks: Sequence[tuple[str, float, str]],
    round_number: int,
    looks: int,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Stop | None:
    """The reason to stop a candidate whose per-question scores so far are ``rows`` (a random
    subset of ``total``), or None. ``looks``: the rounds that may stop one (all but the last);
    ``checks``: :func:`limits`. A candidate is stopped only on a bound strictly below a limit."""
    if not checks or len(rows) >= total:
        return None
    delta = (1 - confidence) / (max(looks, 1) * len(checks))
    for metric, limit, against in checks:
        values = [float(v) for row in rows if (v := row.get(metric)) is not None]
        if not values:
            continue
        bound = mean_upper_bound(values, total - (len(rows) - len(values)), delta)
        if bound < limit:
            return Stop(round=round_number, answered=len(rows), total=total, metric=metric,
                        bound=round(bound, 4), limit=limit, against=against,
                        confidence=confidence)  # fmt: skip
    return None


def answer_in_rounds(
    answer: Callable[[list[int]], list[dict[str, Any]]],
    total: int,
    order: Sequence[int],
    checks: Sequence[tuple[str, float, str]],
    rounds: Sequence[int] = DEFAULT_ROUNDS,
    confidence: float = DEFAULT_CONFIDENCE,
) -> tuple[list[tuple[int, dict[str, Any]]], Stop | None]:
    """Answer in rounds: ``answer(indices)`` answers those questions and returns one row per index
    (with ``"scores"``). Returns the (index, row) pairs answered, in question order, and the
    :class:`Stop` that ended it early, or None when it answered them all."""
    schedule = round_schedule(total, rounds)
    answered: list[tuple[int, dict[str, Any]]] = []
    for number, upto in enumerate(schedule, 1):
        todo = list(order[len(answered) : upto])
        answered += list(zip(todo, answer(todo), strict=True))
        stop = stopping([row["scores"] for _, row in answered], total, checks, number, len(schedule) - 1,
                        confidence)  # fmt: skip
        if stop is not None:
            return sorted(answered, key=lambda pair: pair[0]), stop
    return sorted(answered, key=lambda pair: pair[0]), None


def evaluate_candidate(
    name: str,
    pipeline: Any,
    golden: Any,
    hits: list[list[Any]],
    k: int,
    *,
    floor_answer_key: float,
    policy: GatePolicy,
    judge: Any = None,
    floor_answers: list[Any] | None = None,
    rounds: Sequence[int] = DEFAULT_ROUNDS,
    confidence: float = DEFAULT_CONFIDENCE,
    write: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score one candidate of flows/evaluate_rag.py on ``golden`` from the same retrieved ``hits``:
    the extractive one scores ``floor_answers`` (the ``RagAnswer`` of each question, answered
    once before), any other answers in ``rounds`` and may stop early (:func:`answer_in_rounds`,
    its order seeded by the golden set's version). Returns the candidate's ``scores`` (means over
    the questions it answered), ``rows``, ``notes``, ``answered``, ``settings`` and, when it
    stopped, ``stopped`` (:meth:`Stop.sentence`) and ``stop``; progress lines go to ``write``."""
    from llmops.progress import Progress
    from llmops.rag.evaluation import evaluate_pipeline, mean_scores

    total = len(hits)
    notes: list[str] = []
    extractive = floor_answers is not None
    progress = Progress(f"{name}: {'scored' if extractive else 'answered'}", total, "questions",
                        every_s=10, write=write)  # fmt: skip

    def answer(indices: list[int]) -> list[dict[str, Any]]:
        part = golden.model_copy(update={"questions": [golden.questions[i] for i in indices]})
        given = [floor_answers[i] for i in indices] if floor_answers is not None else None
        before = progress.done
        result = evaluate_pipeline(pipeline, part, k, judge, hits=[hits[i] for i in indices],
                                   progress=lambda done, _: progress.update(before + done),
                                   answers=given)  # fmt: skip
        progress.update(before + len(indices))
        notes.extend(result.notes)
        return result.rows

    stop: Stop | None = None
    if extractive:
        with progress.ticking():
            answered = list(enumerate(answer(list(range(total)))))
    else:
        checks = limits({"answer_key": floor_answer_key}, policy)
        below = ", ".join(f"{against} {metric} {limit:.3f}" for metric, limit, against in checks)
        schedule = ", ".join(map(str, round_schedule(total, rounds)))
        write(f"{name}: {total} questions in rounds of {schedule}; stops below {below}" if rounds
              else f"{name}: all {total} questions (--rounds none: no early stop)")  # fmt: skip
        with progress.ticking():  # a round is one batch: the line again every 10 s while it runs
            answered, stop = answer_in_rounds(answer, total, answer_order(total, golden.content_version),
                                              checks, rounds, confidence)  # fmt: skip
    rows = [row for _, row in answered]
    return {
        "settings": pipeline.generator.settings,
        "scores": mean_scores([row["scores"] for row in rows]),
        "rows": rows,
        "notes": notes,
        "answered": len(rows),
        "stopped": stop.sentence(name) if stop else None,
        "stop": stop.model_dump() if stop else None,
    }
