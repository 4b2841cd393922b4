"""Evaluate a RAG pipeline on a golden set: retrieval hit@k and MRR, context coverage and
precision, answer key facts, plus ragas metrics.

The golden set (``evals/rag_golden.yaml``) holds questions with a reference answer, the
reference contexts (verbatim excerpts of the corpus) and optionally ``keys``: short facts a
correct answer states. A retrieved chunk is relevant when it contains a reference context
(fuzzy substring match, so whitespace, case and a chunk boundary inside the excerpt do not
matter, and a one-sentence excerpt is found inside an 800-character chunk). Metrics, each a mean
over the questions:

    hit_rate                 at least one relevant chunk in the top k
    mrr                      1 / rank of the first relevant chunk (0 when none)
    reference_coverage       share of the reference contexts found in the retrieved chunks
    context_precision        share of the retrieved chunks that contain a reference context
    answer_key               share of the keys the answer states (without keys: 1 when the answer
                             quotes a reference context)
    string_similarity        ragas NonLLMStringSimilarity (answer vs reference)
    rouge_l                  ragas RougeScore (ROUGE-L F1, answer vs reference)
    ragas_context_precision  ragas NonLLMContextPrecisionWithReference, and
    ragas_context_recall     ragas NonLLMContextRecall: edit distance of whole chunks against
                             excerpts, so they read near 0 when excerpts are much shorter than
                             chunks; recorded for comparison, not gated by default
    faithfulness             ragas Faithfulness, LLM-judged: only with a judge endpoint
    answer_relevancy         ragas AnswerRelevancy, LLM-judged: only with a judge endpoint
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmops.errors import LlmopsError, parse_yaml_model
from llmops.rag.pipeline import RagAnswer
from llmops.settings import first_value, set_library_default

NON_LLM_METRICS = (
    "answer_key",
    "string_similarity",
    "rouge_l",
    "ragas_context_precision",
    "ragas_context_recall",
)
RETRIEVAL_METRICS = ("hit_rate", "mrr", "reference_coverage", "context_precision")
JUDGED_METRICS = ("faithfulness", "answer_relevancy")
METRICS = RETRIEVAL_METRICS + NON_LLM_METRICS + JUDGED_METRICS
RELEVANCE_MIN_RATIO = 90  # rapidfuzz partial_ratio of a reference context inside a chunk
_CITATION = re.compile(r"\s*\[\d+\]")


class GoldenError(LlmopsError, ValueError):
    """A golden set that cannot be used; names the entry and the field."""


class GoldenItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1)
    reference: str = Field(min_length=1)
    reference_contexts: list[str] = Field(min_length=1)
    sources: list[str] = Field(default_factory=list)
    keys: list[str] = Field(default_factory=list)  # short facts a correct answer states, verbatim


class GoldenSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    questions: list[GoldenItem] = Field(min_length=1)

    @property
    def content_version(self) -> str:
        body = json.dumps(self.model_dump(), sort_keys=True)
        return "golden-" + hashlib.sha256(body.encode()).hexdigest()[:12]


def load_golden(path: str | Path, field: str = "--golden") -> GoldenSet:
    path = Path(path)
    if not path.is_file():
        raise GoldenError(f"{field}: no such file: {path}")
    return parse_yaml_model(path.read_text(), GoldenSet, f"{field}: {path}", GoldenError)


def _squash(text: str) -> str:
    return " ".join(text.split()).lower()


def is_relevant(chunk: str, reference_contexts: list[str]) -> bool:
    from rapidfuzz import fuzz

    chunk = _squash(chunk)
    for ref in map(_squash, reference_contexts):
        # a chunk holds the excerpt, or (the excerpt crossing a chunk boundary) at least half of it;
        # a short fragment such as a heading never counts
        if len(chunk) >= len(ref) / 2 and fuzz.partial_ratio(ref, chunk) >= RELEVANCE_MIN_RATIO:
            return True
    return False


def retrieval_scores(retrieved: list[list[str]], golden: GoldenSet) -> list[dict[str, float]]:
    """Per question: hit (0/1), reciprocal rank of the first relevant chunk, the share of the
    reference contexts found in some retrieved chunk, and the share of retrieved chunks holding one."""
    rows = []
    for chunks, item in zip(retrieved, golden.questions, strict=True):
        relevant = [is_relevant(chunk, item.reference_contexts) for chunk in chunks]
        ranks = [r for r, hit in enumerate(relevant, 1) if hit]
        covered = [any(is_relevant(chunk, [ref]) for chunk in chunks) for ref in item.reference_contexts]
        rows.append(
            {
                "hit_rate": float(bool(ranks)),
                "mrr": 1.0 / ranks[0] if ranks else 0.0,
                "reference_coverage": sum(covered) / len(covered),
                "context_precision": sum(relevant) / len(chunks) if chunks else 0.0,
            }
        )
    return rows


def answer_key_score(answer: str, item: GoldenItem) -> float:
    """Share of ``item.keys`` the answer states (case and spacing ignored, citations dropped);
    without keys, 1.0 when the answer quotes one of the reference contexts, else 0.0."""
    text = _squash(_CITATION.sub("", answer))
    if item.keys:
        return sum(_squash(key) in text for key in item.keys) / len(item.keys)
    from rapidfuzz import fuzz

    return float(
        any(fuzz.partial_ratio(_squash(ref), text) >= RELEVANCE_MIN_RATIO for ref in item.reference_contexts)
    )


class Judge(BaseModel):
    """An OpenAI-compatible endpoint that judges answers (faithfulness, answer relevancy)."""

    url: str
    model: str
    # answer relevancy compares questions by embedding, locally; faithfulness alone needs none
    embedding_model_path: str = ""


def ragas_scores(
    golden: GoldenSet, answers: list[RagAnswer], judge: Judge | None = None
) -> tuple[list[dict[str, float | None]], list[str]]:
    """Per question ragas metrics, and notes on anything that could not be scored."""
    set_library_default("RAGAS_DO_NOT_TRACK", "true")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ragas import EvaluationDataset, SingleTurnSample, evaluate
        from ragas.metrics import (
            NonLLMContextPrecisionWithReference,
            NonLLMContextRecall,
            NonLLMStringSimilarity,
            RougeScore,
        )

    samples = [
        SingleTurnSample(
            user_input=item.question,
            retrieved_contexts=[s.text for s in answer.sources] or [""],
            reference_contexts=item.reference_contexts,
            response=answer.answer,
            reference=item.reference,
        )
        for item, answer in zip(golden.questions, answers, strict=True)
    ]
    metrics = {
        "ragas_context_precision": NonLLMContextPrecisionWithReference(),
        "ragas_context_recall": NonLLMContextRecall(),
        "string_similarity": NonLLMStringSimilarity(),
        "rouge_l": RougeScore(rouge_type="rougeL"),
    }
    result = evaluate(
        EvaluationDataset(samples=samples), metrics=list(metrics.values()), show_progress=False
    ).to_pandas()
    # ragas names result columns after its metrics' settings (e.g. "rouge_score(mode=fmeasure)"):
    # they follow the sample's own columns, in the order the metrics were given
    columns = [c for c in result.columns if c not in SingleTurnSample.model_fields][: len(metrics)]
    rows: list[dict[str, float | None]] = [
        {name: _number(result.iloc[i][column]) for name, column in zip(metrics, columns, strict=True)}
        for i in range(len(samples))
    ]
    notes: list[str] = []
    if judge is not None:
        triples = [
            (item.question, answer.answer, [s.text for s in answer.sources])
            for item, answer in zip(golden.questions, answers, strict=True)
        ]
        judged, notes = judge_samples(triples, judge)
        for row, extra in zip(rows, judged, strict=True):
            row.update(extra)
    return rows, notes


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else number  # NaN: not scored


def judge_samples(
    samples: Sequence[tuple[str, str, list[str]]], judge: Judge, metrics: Sequence[str] = JUDGED_METRICS
) -> tuple[list[dict[str, float | None]], list[str]]:
    """The judged ``metrics`` (of :data:`JUDGED_METRICS`) of each (question, answer, contexts), and
    notes on what the judge could not score: a judge that fails or cannot be reached leaves a score
    None with its note, never raises. The evaluation and the live monitor both judge through here."""
    set_library_default("RAGAS_DO_NOT_TRACK", "true")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from openai import AsyncOpenAI
        from ragas.llms import llm_factory
        from ragas.metrics.collections import AnswerRelevancy, Faithfulness

    key = first_value("LLMOPS_JUDGE_API_KEY", "OPENAI_API_KEY") or "unused"
    llm = llm_factory(judge.model, client=AsyncOpenAI(base_url=judge.url, api_key=key, max_retries=1))
    scorers: dict[str, Any] = {}
    if "faithfulness" in metrics:
        faithfulness = Faithfulness(llm=llm)
        scorers["faithfulness"] = lambda q, a, c: faithfulness.ascore(
            user_input=q, response=a, retrieved_contexts=c
        )
    if "answer_relevancy" in metrics:
        from ragas.embeddings import HuggingFaceEmbeddings

        embeddings = HuggingFaceEmbeddings(model=judge.embedding_model_path)
        relevancy = AnswerRelevancy(llm=llm, embeddings=embeddings)
        scorers["answer_relevancy"] = lambda q, a, c: relevancy.ascore(user_input=q, response=a)
    notes: list[str] = []

    async def one(question: str, answer: str, contexts: list[str]) -> dict[str, float | None]:
        scores: dict[str, float | None] = {}
        for name, score in scorers.items():
            try:
                scores[name] = _number((await score(question, answer, contexts)).value)
            except Exception as exc:  # a judge that fails one question leaves that score unmeasured
                scores[name] = None
                notes.append(f"{name} not scored for {question[:60]!r}: {type(exc).__name__}: {exc}"[:300])
        return scores

    async def run_all():
        return await asyncio.gather(*(one(q, a, list(c)) for q, a, c in samples))

    return list(asyncio.run(run_all())), notes


def mean_scores(rows: list[dict[str, float | None]]) -> dict[str, float]:
    """Mean of each metric over the questions where it was measured; a metric measured for none
    is left out (so a gate rule on it fails as missing, never passes by default)."""
    names = [n for n in METRICS if any(n in row for row in rows)]
    means = {}
    for name in names:
        values = [row[name] for row in rows if row.get(name) is not None]
        if values:
            means[name] = round(sum(values) / len(values), 4)
    return means


class EvalResult(BaseModel):
    scores: dict[str, float]  # metric -> mean over the questions
    rows: list[dict[str, Any]]  # per question: question, answer, sources, scores
    notes: list[str]  # what could not be scored, and why


def evaluate_pipeline(
    pipeline: Any,
    golden: GoldenSet,
    k: int,
    judge: Judge | None = None,
    hits: list[list[Any]] | None = None,
    progress: Callable[[int, int], None] | None = None,
    answers: list[RagAnswer] | None = None,
) -> EvalResult:
    """Answer every golden question with ``pipeline`` (a RagPipeline), in batches, and score the
    answers.

    ``hits`` (one list of retrieved ``Hit`` per question) lets several generators be compared on
    exactly the same contexts; by default the pipeline retrieves ``k`` chunks itself.
    ``progress(answered, total)`` is called after each batch (``llmops.progress.Progress.callback``
    prints); ``answers`` already given (one per question, from ``hits``) are scored, not asked again."""
    questions = [item.question for item in golden.questions]
    if hits is None:
        hits = pipeline.retriever.retrieve_many(questions, k)  # one embedding batch for all questions
    if answers is None:
        answers = pipeline.answer_many(questions, hits, progress=progress)
    retrieval = retrieval_scores([[hit.text for hit in h] for h in hits], golden)
    judged, notes = ragas_scores(golden, answers, judge)
    rows = [
        {
            "question": item.question,
            "answer": answer.answer,
            "sources": [f"{s.path}#{s.chunk}" for s in answer.sources],
            "scores": {**r, "answer_key": answer_key_score(answer.answer, item), **j},
        }
        for item, answer, r, j in zip(golden.questions, answers, retrieval, judged, strict=True)
    ]
    return EvalResult(scores=mean_scores([row["scores"] for row in rows]), rows=rows, notes=notes)
