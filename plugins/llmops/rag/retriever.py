"""Top-k retrieval over an index, with metadata filters; also a LangChain retriever.

Scores are cosine similarities (1 - Chroma's cosine distance), highest first. Filters match
chunk metadata exactly: ``{"source": "drift.md"}``, or a list for any of several values
``{"source": ["a.md", "b.md"]}``; only the keys in ``FILTER_KEYS`` are accepted.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel

from llmops.errors import LlmopsError
from llmops.rag.embeddings import Embedder

FILTER_KEYS = ("source", "kind", "doc_hash")
MAX_K = 50


class RetrievalError(LlmopsError, ValueError):
    """A retrieval request that cannot be answered; names the field."""


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
        if isinstance(value, list):
            if not value or not all(isinstance(v, str) for v in value):
                raise RetrievalError(f"filters.{key}: a list must hold one or more strings")
            clauses.append({key: {"$in": value}})
        elif isinstance(value, str):
            clauses.append({key: value})
        else:
            raise RetrievalError(f"filters.{key}: expected a string or a list of strings")
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


class Retriever:
    """Embeds the question with the index's model and asks the collection for the nearest chunks."""

    def __init__(self, collection: Any, embedder: Embedder):
        self.collection = collection
        self.embedder = embedder
        self.index_version = collection.name

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
        where = chroma_where(filters)
        vectors = self.embedder.embed(questions)
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

    def as_langchain(self, k: int = 4, filters: dict[str, Any] | None = None):
        """A LangChain ``BaseRetriever`` over this index (for users' own chains)."""
        return _langchain_retriever_class()(retriever=self, k=k, filters=filters)


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
