"""Top-k retrieval over an index, with metadata filters; also a LangChain retriever.

Three modes (a release setting, see ``RetrievalSettings``): ``dense`` asks Chroma for the nearest
embeddings; ``bm25`` ranks chunks by BM25 over their words (:mod:`llmops.rag.lexical`);
``hybrid`` takes ``candidates`` from each and fuses the two rankings by weighted reciprocal rank,
``sum(weight / (rrf_k + rank))``, which needs no score calibration between the two.

Hits are ordered by the mode's ranking; ``score`` is always the cosine similarity of the chunk to
the question (1 - Chroma's cosine distance), so it means the same in every mode. Filters match
chunk metadata exactly: ``{"source": "drift.md"}``, or a list for any of several values
``{"source": ["a.md", "b.md"]}``; only the keys in ``FILTER_KEYS`` are accepted.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from llmops.errors import LlmopsError
from llmops.rag.embeddings import Embedder
from llmops.tracing import annotate, span

FILTER_KEYS = ("source", "kind", "doc_hash")
MAX_K = 50
# a filter's list of values and each value: Chroma binds each value as one SQL variable, and
# SQLite takes at most 32,766 in a statement
MAX_FILTER_VALUES = 1000
MAX_FILTER_CHARS = 1024
RetrievalMode = Literal["dense", "bm25", "hybrid"]
# measured on the golden sets (bench/rag_quality.py: docs/ and the README corpus): BM25 leads,
# dense breaks ties; the evaluate flow's parameters default to these, so a release made with no
# options is ranked this way
DEFAULT_MODE: RetrievalMode = "hybrid"
DEFAULT_DENSE_WEIGHT = 1.0
DEFAULT_BM25_WEIGHT = 2.0
DEFAULT_RRF_K = 60  # the usual reciprocal-rank constant: damps the head of each list
# taken from each ranking before fusion. A chunk one ranking puts near the top and the other
# ranks below this depth gets one term where its rivals get two: at 20 such chunks fell out of
# the top 5 (hit@5 51 of 56 golden questions), at 50 they stay (52 of 56, hit@1 unchanged)
DEFAULT_CANDIDATES = 50


class RetrievalError(LlmopsError, ValueError):
    """A retrieval request that cannot be answered; names the field."""


class RetrievalSettings(BaseModel):
    """How a release ranks chunks; recorded in the release and evaluated by the gate."""

    model_config = ConfigDict(extra="forbid")

    mode: RetrievalMode = DEFAULT_MODE
    dense_weight: float = Field(DEFAULT_DENSE_WEIGHT, ge=0)
    bm25_weight: float = Field(DEFAULT_BM25_WEIGHT, ge=0)
    rrf_k: int = Field(DEFAULT_RRF_K, ge=1)
    candidates: int = Field(DEFAULT_CANDIDATES, ge=1, le=200)  # taken from each ranking before fusion
    tokenizer: str = ""  # BM25 tokenizer version, filled in by the retriever

    def model_post_init(self, _context: Any) -> None:
        from llmops.rag.lexical import TOKENIZER

        if self.mode != "dense" and not self.tokenizer:
            self.tokenizer = TOKENIZER
        if self.mode == "hybrid" and self.dense_weight == 0 and self.bm25_weight == 0:
            raise ValueError("dense_weight, bm25_weight: at least one must be above 0")


class Hit(BaseModel):
    id: str
    text: str
    source: str
    position: int
    score: float  # cosine similarity, higher is closer


def chroma_where(filters: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chroma's ``where`` for exact-match filters; unknown keys or values are errors naming them."""
    if not filters:
        return None
    clauses = []
    for key, value in filters.items():
        if key not in FILTER_KEYS:
            raise RetrievalError(f"filters.{key}: unknown filter (use one of {list(FILTER_KEYS)})")
        if not isinstance(value, str | list):
            raise RetrievalError(f"filters.{key}: expected a string or a list of strings")
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) for v in values):
            raise RetrievalError(f"filters.{key}: a list must hold one or more strings")
        if len(values) > MAX_FILTER_VALUES:
            raise RetrievalError(f"filters.{key}: at most {MAX_FILTER_VALUES} values, got {len(values)}")
        if any(len(v) > MAX_FILTER_CHARS for v in values):
            raise RetrievalError(f"filters.{key}: a value longer than {MAX_FILTER_CHARS} characters")
        clauses.append({key: {"$in": value}} if isinstance(value, list) else {key: value})
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


class Retriever:
    """Ranks an index's chunks for a question: dense (Chroma), BM25, or both fused by rank."""

    def __init__(self, collection: Any, embedder: Embedder, settings: RetrievalSettings | None = None):
        from llmops.rag.lexical import Bm25Index

        self.collection = collection
        self.embedder = embedder
        # no settings: dense only, which needs no BM25 index (a release always records its settings)
        self.settings = settings or RetrievalSettings(mode="dense")
        self.index_version = collection.name
        self.bm25 = Bm25Index.from_collection(collection) if self.settings.mode != "dense" else None

    def retrieve(self, question: str, k: int = 4, filters: dict[str, Any] | None = None) -> list[Hit]:
        return self.retrieve_many([question], k, filters)[0]

    def retrieve_many(
        self, questions: list[str], k: int = 4, filters: dict[str, Any] | None = None
    ) -> list[list[Hit]]:
        """One list of hits per question; the questions are embedded in one batch."""
        if not 1 <= k <= MAX_K:
            raise RetrievalError(f"k: must be between 1 and {MAX_K}, got {k}")
        if not questions:
            return []
        if any(not q.strip() for q in questions):
            raise RetrievalError("question: must not be empty")
        with span(
            "retrieve", retrieval_mode=self.settings.mode, k=k, index_version=self.index_version
        ) as traced:
            found = self._ranked(questions, k, filters)
            annotate(traced, hits=sum(map(len, found)))
        return found

    def _ranked(self, questions: list[str], k: int, filters: dict[str, Any] | None) -> list[list[Hit]]:
        where = chroma_where(filters)
        vectors = self.embedder.embed(questions)
        mode = self.settings.mode
        if mode == "dense":
            return self._dense(vectors, k, where)
        dense = self._dense(vectors, self.settings.candidates, where) if mode == "hybrid" else None
        mask = self.bm25.mask(filters)
        found = []
        for n, question in enumerate(questions):
            lexical = self.bm25.search(question, k if mode == "bm25" else self.settings.candidates, mask)
            lexical_ids = [self.bm25.ids[position] for position, _ in lexical]
            if mode == "bm25":
                ranked = lexical_ids
            else:
                with span("fuse", retrieval_mode=mode, candidates=self.settings.candidates):
                    ranked = rrf_fuse(
                        [[h.id for h in dense[n]], lexical_ids],
                        [self.settings.dense_weight, self.settings.bm25_weight],
                        self.settings.rrf_k,
                    )
            known = {h.id: h for h in dense[n]} if dense else {}
            found.append(self._hits(ranked[:k], vectors[n], known))
        return found

    def _dense(self, vectors: np.ndarray, k: int, where: dict[str, Any] | None) -> list[list[Hit]]:
        result = self.collection.query(
            query_embeddings=vectors,
            n_results=k,
            where=where,
            include=["documents", "metadatas", "distances"],
        )
        return [
            [
                Hit(
                    id=chunk_id,
                    text=text,
                    source=str(meta.get("source", "")),
                    position=int(meta.get("position", -1)),
                    score=round(1.0 - float(distance), 6),
                )
                for chunk_id, text, meta, distance in zip(ids, texts, metas, distances, strict=True)
            ]
            for ids, texts, metas, distances in zip(
                result["ids"], result["documents"], result["metadatas"], result["distances"], strict=True
            )
        ]

    def _hits(self, ids: list[str], vector: np.ndarray, known: dict[str, Hit]) -> list[Hit]:
        """Hits for ``ids`` in that order; the cosine score of chunks the dense side did not
        return is computed from their stored embeddings."""
        missing = [i for i in ids if i not in known]
        if missing:
            stored = self.collection.get(ids=missing, include=["embeddings", "documents", "metadatas"])
            for chunk_id, text, meta, embedding in zip(
                stored["ids"], stored["documents"], stored["metadatas"], stored["embeddings"], strict=True
            ):
                known[chunk_id] = Hit(
                    id=chunk_id,
                    text=text,
                    source=str(meta.get("source", "")),
                    position=int(meta.get("position", -1)),
                    score=round(float(np.dot(np.asarray(embedding, dtype=np.float32), vector)), 6),
                )
        return [known[i] for i in ids if i in known]

    def as_langchain(self, k: int = 4, filters: dict[str, Any] | None = None):
        """A LangChain ``BaseRetriever`` over this index (for users' own chains)."""
        return _langchain_retriever_class()(retriever=self, k=k, filters=filters)


def rrf_fuse(rankings: list[list[str]], weights: list[float], rrf_k: int = 60) -> list[str]:
    """Ids ordered by weighted reciprocal-rank fusion, ``sum(w / (rrf_k + rank))`` (rank from 1);
    ties keep the order of first appearance (dense before BM25)."""
    fused: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, chunk_id in enumerate(ranking, 1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + weight / (rrf_k + rank)
    order = {chunk_id: n for n, chunk_id in enumerate(fused)}
    return sorted(fused, key=lambda i: (-fused[i], order[i]))


@cache
def _langchain_retriever_class():
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    class LlmopsRetriever(BaseRetriever):
        """LangChain retriever backed by an llmops index: ``retriever.invoke("question")``."""

        retriever: Any
        k: int = 4
        filters: dict[str, Any] | None = None

        def _get_relevant_documents(
            self, query: str, *, run_manager: CallbackManagerForRetrieverRun
        ) -> list[Document]:
            return [
                Document(
                    page_content=hit.text,
                    id=hit.id,
                    metadata={
                        "source": hit.source,
                        "position": hit.position,
                        "score": hit.score,
                        "index_version": self.retriever.index_version,
                    },
                )
                for hit in self.retriever.retrieve(query, self.k, self.filters)
            ]

    return LlmopsRetriever


def __getattr__(name: str):
    # LangChain is imported only when the LangChain retriever is asked for
    if name == "LlmopsRetriever":
        return _langchain_retriever_class()
    raise AttributeError(name)
