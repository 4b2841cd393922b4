"""What the RAG monitor reads besides its policy: the log window, the index and the docs folder.

The rows' models (``rag_request`` and ``feedback``, see docs/rag.md) are here; the measures
themselves are in :mod:`llmops.rag.monitor`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from llmops.live_measures import Measure, Rating
    from llmops.rag.evaluation import Judge
    from llmops.rag.monitor import MonitorRules, MonitorVerdict
    from llmops.rag.release import RagRelease


class LoggedSource(BaseModel):
    model_config = ConfigDict(extra="ignore")

    source: str
    chunk: str | None = None
    score: float | None = None

    @field_validator("chunk", mode="before")
    @classmethod
    def _chunk_as_text(cls, value: Any) -> str | None:
        return None if value is None else str(value)  # the index's ids are text


class RagRequest(BaseModel):
    """A ``rag_request`` row, as the RAG service logs it (fields the monitor does not read are
    ignored, so a row with more fields still reads)."""

    model_config = ConfigDict(extra="ignore")

    request_id: str
    timestamp: str
    model_version: str | None = None
    route: str = "/query"
    question: str | None = None
    sources: list[LoggedSource] = Field(default_factory=list)
    top_score: float | None = None
    low_confidence: bool | None = None
    answer: str | None = None
    latency_ms: dict[str, float | None] = Field(default_factory=dict)
    status: int = 200
    error: str | None = None

    def best_score(self) -> float | None:
        """The logged top score, else the first source's."""
        if self.top_score is not None:
            return self.top_score
        return self.sources[0].score if self.sources else None


class Window(BaseModel):
    """The rows of one window: requests oldest first, the latest feedback per request id, and
    how many rows could not be read as either."""

    requests: list[RagRequest] = Field(default_factory=list)
    feedback: list[Rating] = Field(default_factory=list)
    unreadable: int = 0


def window_from_rows(rows: Sequence[dict[str, Any]]) -> Window:
    """Split raw log rows by ``kind``; the latest feedback on a request id stands
    (:func:`llmops.request_log.latest_feedback`). A shadow challenger's rows are not traffic:
    they are left out (:func:`llmops.request_log.champion_rows`)."""
    from pydantic import ValidationError

    from llmops.live_measures import Rating
    from llmops.request_log import champion_rows, latest_feedback

    rows = champion_rows(rows)
    requests, feedback, unreadable = [], [], 0
    for row in rows:
        if row.get("kind") != "rag_request":
            continue
        try:
            requests.append(RagRequest.model_validate(row))
        except ValidationError:
            unreadable += 1  # a malformed row must not hide the rest of the window
    for row in latest_feedback(rows).values():
        try:
            feedback.append(Rating.model_validate(row))
        except ValidationError:
            unreadable += 1
    requests.sort(key=lambda r: r.timestamp)
    return Window(
        requests=requests, feedback=sorted(feedback, key=lambda f: f.timestamp), unreadable=unreadable
    )


# ---- inputs ------------------------------------------------------------------------------


def read_window(
    root: Path | str | None, release: str, since: datetime | str | None, until: datetime | str | None
) -> Window:
    """The champion's ``rag_request`` and ``feedback`` rows of ``<root>/<release>`` with
    ``since <= timestamp < until``, read whole (:func:`llmops.request_log.read_rows`)."""
    from llmops.request_log import CHAMPION_ROLE, FEEDBACK, RAG_REQUEST, read_rows

    rows = read_rows(root, release, since, until, kinds={RAG_REQUEST, FEEDBACK}, roles=[CHAMPION_ROLE])
    return window_from_rows(rows)


def index_manifest(collection: Any, page: int = 5000) -> dict[str, str]:
    """Source path -> content hash of every document in an index (its chunks' metadata)."""
    manifest: dict[str, str] = {}
    for offset in range(0, collection.count(), page):
        batch = collection.get(include=["metadatas"], limit=page, offset=offset)
        for meta in batch["metadatas"]:
            manifest[str(meta["source"])] = str(meta["doc_hash"])
    return manifest


def corpus_files(docs: str | Path) -> dict[str, str]:
    """Relative path -> content hash of the documents in ``docs``, as the index flow loads them."""
    from llmops.rag.documents import load_corpus

    return {d.path: d.content_hash for d in load_corpus(docs, field="--docs").documents}


def chunk_texts(collection: Any, sources: Sequence[LoggedSource]) -> dict[tuple[str, str], str]:
    """(source, chunk) -> text of the logged sources the index still holds. The service logs a
    chunk as its position in the document; a chunk logged by its index id is found too."""
    files = sorted({s.source for s in sources})
    if not files:
        return {}
    found = collection.get(where={"source": {"$in": files}}, include=["documents", "metadatas"])
    texts = {}
    for chunk_id, text, meta in zip(found["ids"], found["documents"], found["metadatas"], strict=True):
        texts[meta["source"], str(meta["position"])] = text
        texts[meta["source"], chunk_id] = text
    return texts


def grounded_requests(
    requests: Sequence[RagRequest], collection: Any
) -> tuple[list[tuple[RagRequest, list[str]]], str]:
    """Every answered request whose sources the index holds, with its sources' text, and why there
    are none when there are none."""
    answered = [r for r in requests if r.route == "/query" and r.status < 400]
    logged = [r for r in answered if r.answer]
    if not answered:
        return [], "no /query request was answered in the window"
    if not logged:
        return [], "answers were not logged (text logging is off)"
    texts = chunk_texts(collection, [s for r in logged for s in r.sources])
    found = []
    for request in logged:
        contexts = [t for s in request.sources if (t := texts.get((s.source, s.chunk or "")))]
        if contexts:
            found.append((request, contexts))
    return found, "" if found else "the logged sources are not in the release's index"


def grounding_pairs(requests: Sequence[RagRequest], collection: Any) -> tuple[list[tuple[str, str]], str]:
    """(answer, its sources' text) of every answered request whose sources the index holds."""
    found, why = grounded_requests(requests, collection)
    return [(r.answer or "", "\n\n".join(contexts)) for r, contexts in found], why


JUDGE_SEED = 0  # the same window samples the same answers, run after run


def judge_from_options(url: str, model: str, sample: int) -> Judge | None:
    """The monitor's judge from ``--judge-url``/``--judge-model``/``--judge-sample`` (checked as the
    evaluation flow checks them), None without a URL."""
    from llmops.errors import ParameterError
    from llmops.rag.evaluation import Judge

    if url and not model:
        raise ParameterError("--judge-model: required with --judge-url")
    if sample < 1:
        raise ParameterError(f"--judge-sample: must be at least 1, got {sample}")
    return Judge(url=url, model=model) if url else None


def judge_window(
    found: Sequence[tuple[RagRequest, list[str]]],
    missing: str,
    rules: MonitorRules,
    judge: Judge | None,
    sample: int = 20,
) -> Measure:
    """``judged_faithfulness`` of up to ``sample`` of the grounded requests (:func:`grounded_requests`),
    drawn with a fixed seed and judged by :func:`llmops.rag.evaluation.judge_samples`."""
    import random

    from llmops.rag.monitor import measure_judged_faithfulness

    triples = [(r.question, r.answer or "", contexts) for r, contexts in found if r.question]
    if judge is None:
        missing = "no judge configured (--judge-url, --judge-model)"
    elif not missing and not triples:
        missing = "questions were not logged (text logging is off)"
    if missing:
        return measure_judged_faithfulness([], rules, missing)
    from llmops.rag.evaluation import judge_samples

    chosen = random.Random(JUDGE_SEED).sample(triples, min(sample, len(triples)))
    rows, notes = judge_samples(chosen, judge, ("faithfulness",))
    return measure_judged_faithfulness([row["faithfulness"] for row in rows], rules, notes=notes)


def measure_window(
    window: Window,
    rules: MonitorRules,
    *,
    embedder: Any,
    collection: Any,
    reference_questions: Sequence[str],
    reference_scores: Sequence[float],
    docs: str | Path,
    judge: Judge | None = None,
    judge_sample: int = 20,
) -> MonitorVerdict:
    """Every measure of ``window`` for a release whose index is ``collection`` and whose questions
    ``embedder`` embeds, and the verdict. ``reference_questions`` are the golden and the last
    passing window's questions, ``reference_scores`` the top scores the release's evaluation saw,
    ``docs`` the folder the index was built from; with a ``judge``, ``judge_sample`` answers are
    judged (not below ``min_requests`` requests, where no verdict is given)."""
    from llmops.errors import LlmopsError
    from llmops.rag import monitor as m

    requests = window.requests
    asked = [r.question for r in requests if r.question]
    if asked:
        drift = m.measure_question_drift(
            embedder.embed(list(reference_questions)), embedder.embed(asked), asked, rules
        )
    else:
        why = "questions were not logged (text logging is off)" if requests else "no requests"
        drift = m.not_applied("question_drift", rules.question_alpha, f"not measured: {why}")
    window_scores = [s for r in requests if (s := r.best_score()) is not None]
    found, ungrounded = grounded_requests(requests, collection)
    pairs = [(r.answer or "", "\n\n".join(contexts)) for r, contexts in found]
    # a thin window gets no verdict: the judge's calls are spared
    unjudged = ungrounded or ("not enough traffic" if len(requests) < rules.min_requests else "")
    judged = judge_window(found, unjudged, rules, judge, judge_sample)
    try:
        change, no_docs = m.corpus_change(index_manifest(collection), corpus_files(docs)), ""
    except LlmopsError as exc:  # a moved or unreadable docs folder is reported, not fatal
        change, no_docs = None, str(exc)
    measures = [
        drift,
        m.measure_top_scores(reference_scores, window_scores, rules),
        m.measure_low_confidence(requests, rules),
        m.measure_groundedness(pairs, rules, ungrounded),
        judged,
        m.measure_feedback(window.feedback, rules),
        *m.measure_latency(requests, rules),
        m.measure_corpus(change, no_docs),
    ]
    return m.decide(measures, len(requests), len(window.feedback), rules)


def golden_candidates(window: Window, rules: MonitorRules, golden: Sequence[str]) -> dict[str, Any] | None:
    """Candidate golden items in the window (:mod:`llmops.rag.golden_growth`), for curation;
    None where that module is not installed."""
    try:
        from llmops.rag.golden_growth import find_candidates
    except ImportError:
        return None
    rows = [dict(r.model_dump(), kind="rag_request") for r in window.requests]
    rows += [dict(f.model_dump(), kind="feedback") for f in window.feedback]
    report = find_candidates(rows, low_score=rules.low_confidence_score, known_questions=golden)
    return report.model_dump(mode="json")


def rerelease_options(
    release: RagRelease, name: str, docs: str, golden: str, generators: str = ""
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Options of the re-release's runs: the index flow's (the release's chunking and embedding
    model, so that unchanged chunks keep their embeddings) and the evaluation flow's (its k and
    retrieval settings; ``index`` is the release's until a re-index replaces it)."""
    chunking, retrieval = release.index.chunking, release.retrieval
    index = {"docs": docs, "chroma": release.chroma, "embedding_model": release.index.embedding_model,
             "chunk_size": chunking.chunk_size, "chunk_overlap": chunking.chunk_overlap}  # fmt: skip
    evaluate = {"index": release.index.version, "chroma": release.chroma, "golden": golden,
                "release_name": name, "k": release.k, "retrieval": retrieval.mode,
                "dense_weight": retrieval.dense_weight, "bm25_weight": retrieval.bm25_weight}  # fmt: skip
    if generators:
        evaluate["generators"] = generators
    return index, evaluate
