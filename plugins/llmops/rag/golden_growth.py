"""The golden set grows from use: candidate golden items found in what the RAG service logged.

Two kinds of candidate, from the rows of a release's inference log (``kind`` ``rag_request`` and
``feedback``, see ``docs/rag.md``):

    correction       a request rated -1 with a correction: the question, the correction as its
                     reference, the files its answer was retrieved from
    low_confidence   a cluster of at least ``min_cluster`` similar questions that retrieval was
                     unsure of (``low_confidence`` true, or a top score under ``low_score``); the
                     question is the cluster's most central one and there is no reference yet

A candidate's id is a short hash of its kind, question and reference, so the same evidence gives
the same id on every read and a decision about it (``golden_curation``) sticks. Everything here but
:func:`read_rows` is a pure function of the rows, which is what the monitor flow calls.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmops.errors import LlmopsError
from llmops.request_log import CHAMPION_ROLE, FEEDBACK, RAG_REQUEST, latest_feedback
from llmops.text import terms

DEFAULT_MIN_CLUSTER = 3
# share of content words two questions have in common (Jaccard) for them to ask the same thing:
# "how do I roll back the champion" and "roll back champion model" share 3 of 4
DEFAULT_MIN_OVERLAP = 0.5
DEFAULT_MIN_COSINE = 0.8  # the same, for question embeddings a caller gives


class GrowthError(LlmopsError, ValueError):
    """A candidate that cannot be found, accepted or rejected; names the id or the option."""


class SourceChunk(BaseModel):
    """One retrieved chunk of a logged request, in rank order; ``text`` only when the log holds it."""

    source: str
    chunk: int | str | None = None
    score: float | None = None
    text: str | None = None


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    kind: Literal["correction", "low_confidence"]
    question: str
    reference: str | None  # None: accepting it needs one (--reference)
    sources: list[str] = Field(default_factory=list)  # files, best first
    requests: int  # how many logged requests stand behind it
    request_ids: list[str] = Field(default_factory=list)
    questions: list[str] = Field(default_factory=list)  # every distinct question it covers
    contexts: list[SourceChunk] = Field(default_factory=list)  # the rated request's chunks

    @property
    def needs_reference(self) -> bool:
        return self.reference is None


class CandidateReport(BaseModel):
    """What one read of the log found, and why rows did not become candidates."""

    candidates: list[Candidate]
    corrections: int = 0  # negative ratings with a correction (latest per request)
    low_confidence: int = 0  # low-confidence requests with their question logged
    unlogged: int = 0  # rows that would count but whose question text was not logged
    unmatched: int = 0  # corrections whose rated request is not in the window read
    hidden: int = 0  # candidates decided before, or whose question is in the golden set already


def candidate_id(kind: str, question: str, reference: str | None) -> str:
    body = "\n".join((kind, " ".join(question.split()), " ".join((reference or "").split())))
    return "gc-" + hashlib.sha256(body.encode()).hexdigest()[:10]


def _value(row: Mapping[str, Any], key: str) -> Any:
    """A row's field, None for a missing one or a DataFrame's NaN."""
    value = row.get(key)
    return None if isinstance(value, float) and math.isnan(value) else value


def _text(row: Mapping[str, Any], key: str) -> str | None:
    value = _value(row, key)
    return value.strip() or None if isinstance(value, str) else None


def _chunks(row: Mapping[str, Any]) -> list[SourceChunk]:
    found = _value(row, "sources")
    if not isinstance(found, list | tuple):
        return []
    return [SourceChunk.model_validate(s) for s in found if isinstance(s, Mapping) and s.get("source")]


def _files(chunks: Iterable[SourceChunk]) -> list[str]:
    return list(dict.fromkeys(c.source for c in chunks))


def correction_candidates(
    requests: Mapping[str, Mapping[str, Any]], feedback: Mapping[str, Mapping[str, Any]]
) -> tuple[list[Candidate], dict[str, int]]:
    """A candidate per negatively rated request with a correction (``feedback``: latest per id)."""
    counts = Counter[str]()
    found: dict[str, Candidate] = {}
    for request_id, rating in feedback.items():
        correction = _text(rating, "correction")
        if _value(rating, "rating") != -1 or correction is None:
            continue
        counts["corrections"] += 1
        request = requests.get(request_id)
        if request is None:
            counts["unmatched"] += 1
            continue
        question = _text(request, "question")
        if question is None:
            counts["unlogged"] += 1
            continue
        key = candidate_id("correction", question, correction)
        if key in found:  # the same question corrected the same way twice: one item, more evidence
            found[key].requests += 1
            found[key].request_ids.append(request_id)
            continue
        chunks = _chunks(request)
        found[key] = Candidate(
            id=key,
            kind="correction",
            question=question,
            reference=correction,
            sources=_files(chunks),
            requests=1,
            request_ids=[request_id],
            questions=[question],
            contexts=chunks,
        )
    return list(found.values()), dict(counts)


def similarity_matrix(questions: Sequence[str], vectors: Sequence[Sequence[float]] | None = None):
    """(n, n) similarities: cosine of the given vectors (dense), else the Jaccard overlap of content
    words (sparse: only pairs that share a word are stored, so a large log stays small)."""
    import numpy as np
    from scipy.sparse import csr_matrix

    if vectors is not None:
        v = np.asarray(vectors, dtype=np.float64)
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return v @ v.T
    vocabulary: dict[str, int] = {}
    indptr, indices = [0], []
    for question in questions:
        words = {vocabulary.setdefault(t, len(vocabulary)) for t in terms(question)}
        indices.extend(sorted(words))
        indptr.append(len(indices))
    n = len(questions)
    # (n, vocabulary) 0/1 matrix: the shared words of every pair in one sparse product
    m = csr_matrix((np.ones(len(indices)), indices, indptr), shape=(n, max(len(vocabulary), 1)))
    shared = (m @ m.T).tocoo()
    sizes = np.diff(indptr)
    union = sizes[shared.row] + sizes[shared.col] - shared.data
    return csr_matrix((shared.data / union, (shared.row, shared.col)), shape=(n, n))


def cluster_questions(
    questions: Sequence[str],
    weights: Sequence[int] | None = None,
    vectors: Sequence[Sequence[float]] | None = None,
    min_similarity: float | None = None,
) -> list[tuple[list[int], int]]:
    """Groups of similar questions, largest first: (member indices, index of the most central).

    Questions are linked when their similarity reaches ``min_similarity`` (default: word overlap
    0.5, cosine 0.8 with vectors) and a group is a connected set of links. The most central member
    has the highest weighted similarity to the others (``weights``: how often each was asked)."""
    import numpy as np
    from scipy.sparse import issparse
    from scipy.sparse.csgraph import connected_components

    if not questions:
        return []
    threshold = min_similarity
    if threshold is None:
        threshold = DEFAULT_MIN_COSINE if vectors is not None else DEFAULT_MIN_OVERLAP
    sim = similarity_matrix(questions, vectors)
    weight = np.asarray(weights if weights is not None else [1] * len(questions), dtype=np.float64)
    _, labels = connected_components(sim >= threshold, directed=False)
    groups = []
    order = np.argsort(labels, kind="stable")
    for members in np.split(order, np.flatnonzero(np.diff(labels[order])) + 1):
        if len(members) == 1:  # most questions of a log stand alone: no slicing for them
            groups.append(([int(members[0])], int(members[0])))
            continue
        within = sim[members][:, members] if issparse(sim) else sim[np.ix_(members, members)]
        pull = np.asarray(within @ weight[members]).ravel()
        groups.append(([int(i) for i in members], int(members[int(np.argmax(pull))])))
    return sorted(groups, key=lambda g: (-int(weight[g[0]].sum()), g[0][0]))


def _squash(text: str) -> str:
    return " ".join(text.lower().split())


def low_confidence_candidates(
    requests: Iterable[Mapping[str, Any]],
    *,
    low_score: float | None = None,
    min_cluster: int = DEFAULT_MIN_CLUSTER,
    vectors: Mapping[str, Sequence[float]] | None = None,
    min_similarity: float | None = None,
) -> tuple[list[Candidate], dict[str, int]]:
    """A candidate per cluster of at least ``min_cluster`` low-confidence requests.

    ``vectors`` maps a question to its embedding, to cluster by cosine instead of shared words."""
    if min_cluster < 1:
        raise GrowthError(f"--min-cluster: must be at least 1, got {min_cluster}")
    counts = Counter[str]()
    asked: dict[str, list[Mapping[str, Any]]] = {}  # the same question asked again is one point
    for row in requests:
        top = _value(row, "top_score")
        flagged = bool(_value(row, "low_confidence") or False)  # a DataFrame gives numpy booleans
        if not flagged and (low_score is None or top is None or float(top) >= low_score):
            continue
        question = _text(row, "question")
        if question is None:
            counts["unlogged"] += 1
            continue
        counts["low_confidence"] += 1
        asked.setdefault(_squash(question), []).append(row)
    keys = list(asked)
    texts = [_text(asked[k][0], "question") or k for k in keys]
    given = None if vectors is None else [vectors[t] for t in texts]
    found = []
    for members, central in cluster_questions(texts, [len(asked[k]) for k in keys], given, min_similarity):
        rows = [row for i in members for row in asked[keys[i]]]
        if len(rows) < min_cluster:
            continue
        files = Counter(c.source for row in rows for c in _chunks(row)[:1])  # what each ranked first
        found.append(
            Candidate(
                id=candidate_id("low_confidence", texts[central], None),
                kind="low_confidence",
                question=texts[central],
                reference=None,
                sources=[f for f, _ in files.most_common(3)],
                requests=len(rows),
                request_ids=[str(_value(r, "request_id")) for r in rows],
                questions=[texts[i] for i in members],
            )
        )
    return found, dict(counts)


def find_candidates(
    rows: Iterable[Mapping[str, Any]],
    *,
    low_score: float | None = None,
    min_cluster: int = DEFAULT_MIN_CLUSTER,
    vectors: Mapping[str, Sequence[float]] | None = None,
    known_questions: Iterable[str] = (),
    decided: Iterable[str] = (),
) -> CandidateReport:
    """Every candidate in ``rows`` (a release's log rows, any order), corrections first.

    A candidate is left out (``hidden``) when its id is in ``decided``, or when one of the
    questions it covers is in ``known_questions`` (the golden set's, and those decided before),
    so a rejected cluster stays away when its central question changes as it grows. A shadow
    challenger's rows (same request ids) are left out: users saw, and rated, the champion's answer."""
    rows = [r for r in rows if _value(r, "role") in (None, CHAMPION_ROLE)]
    requests = {
        str(_value(r, "request_id")): r
        for r in rows
        if _value(r, "kind") == RAG_REQUEST and _value(r, "request_id") is not None
    }
    corrections, counts = correction_candidates(requests, latest_feedback(rows))
    clusters, more = low_confidence_candidates(
        requests.values(), low_score=low_score, min_cluster=min_cluster, vectors=vectors
    )
    counts = Counter(counts) + Counter(more)
    decided, known = set(decided), {_squash(q) for q in known_questions}
    shown = [
        c
        for c in corrections + clusters
        if c.id not in decided and not known & {_squash(q) for q in c.questions}
    ]
    return CandidateReport(candidates=shown, hidden=len(corrections) + len(clusters) - len(shown), **counts)


def read_rows(
    release: str, since: datetime | str | None = None, root: Path | str | None = None
) -> list[dict[str, Any]]:
    """The release's request and feedback rows since ``since`` (default: all), as written; the
    champion's only."""
    from llmops.request_log import read_rows as read_log_rows

    if isinstance(since, str):
        try:
            datetime.fromisoformat(since)
        except ValueError:
            raise GrowthError(f"--since: {since!r} is not an ISO date or time (2026-01-31T12:00)") from None
    return read_log_rows(root, release, since, kinds=(RAG_REQUEST, FEEDBACK), roles=[CHAMPION_ROLE])
