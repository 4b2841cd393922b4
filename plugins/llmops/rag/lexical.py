"""Lexical retrieval: BM25 over an index's chunks (``bm25s``, a sparse-matrix BM25).

Dense embeddings find paraphrases; BM25 finds the rare exact words a question shares with one
chunk (a flag name, a product, a number). They miss different questions, so the retriever fuses
both by reciprocal rank (see :mod:`llmops.rag.retriever`).

The BM25 index is a pure function of the chunks stored in the Chroma collection (each one's text,
after its heading path where the index was built with one) and of ``TOKENIZER`` (recorded in each
release's retrieval settings): it is versioned by the index
version, travels with an index export (the export holds every chunk text) and is rebuilt in
memory when an index is opened, so an incremental build needs nothing more than the chunks it
already writes. Tokenizing and indexing 5,000 chunks of ~120 words took 6-9 s on the shared
2-core machine (noisy): cheap next to embedding them, but paid again each time an index is opened.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

# bump when terms() changes: a release records it, and a different one scores differently
TOKENIZER = "words-en-stem-v1"

_WORD = re.compile(r"[a-z0-9][a-z0-9_]*(?:[.-][a-z0-9_]+)*")
STOPWORDS = frozenset(
    """a an and are as at be but by can do does did for from has have how i if in into is it its
    me my no not of on or so such that the their then there these they this to was we were what
    when where which who whom why will with you your would should could may might must shall
    about any all also than too very s t just over under out up down""".split()
)


@lru_cache(maxsize=200_000)  # a corpus repeats its words: stem each once
def stem(word: str) -> str:
    """A light suffix stripper: plurals and common verb endings, so "tools" meets "tool" and
    "promoted" meets "promotes". Deliberately conservative: wrong merges hurt BM25 more than misses."""
    if len(word) <= 3 or not word.isalpha():
        return word
    for suffix, keep in (("ies", "y"), ("ing", ""), ("ed", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= (4 if suffix == "ed" else 3):
            if suffix == "s" and word.endswith(("ss", "us", "is")):
                break
            word = word[: -len(suffix)] + keep
            if suffix in ("ing", "ed") and len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":
                word = word[:-1]  # "embedded" -> "embed"
            break
    return word[:-1] if len(word) > 3 and word.endswith("e") else word  # "promote" = "promot(ed)"


def terms(text: str) -> list[str]:
    """Lower-cased, stemmed content words of ``text`` (stopwords dropped), in order."""
    return [stem(w) for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


class Bm25Index:
    """BM25 over a fixed list of chunks; position i is chunk ``ids[i]``."""

    def __init__(self, ids: Sequence[str], texts: Sequence[str], metadatas: Sequence[dict[str, Any]]):
        import bm25s

        if not (len(ids) == len(texts) == len(metadatas)):
            # programming error: the three come from one index read, chunk by chunk
            raise ValueError(f"{len(ids)} ids, {len(texts)} texts and {len(metadatas)} metadatas")
        self.ids, self.texts, self.metadatas = list(ids), list(texts), list(metadatas)
        self.position = {chunk_id: i for i, chunk_id in enumerate(self.ids)}
        self.bm25 = bm25s.BM25()
        if self.ids:
            # an empty token list breaks bm25s' vocabulary; such a chunk simply never matches
            # the stored text as written: BM25 found fewer answers first on text without markup
            # (words of link targets and rST code directives go); the heading path when indexed
            indexed = [
                f"{meta['heading']}\n{text}" if meta.get("heading") else text
                for text, meta in zip(self.texts, self.metadatas, strict=True)
            ]
            self.bm25.index([terms(t) or ["\0"] for t in indexed], show_progress=False)

    @classmethod
    def from_collection(cls, collection: Any, page: int = 5000) -> Bm25Index:
        """The BM25 index of every chunk stored in a Chroma ``collection``."""
        ids: list[str] = []
        texts: list[str] = []
        metas: list[dict[str, Any]] = []
        for offset in range(0, collection.count(), page):
            batch = collection.get(include=["documents", "metadatas"], limit=page, offset=offset)
            ids += batch["ids"]
            texts += batch["documents"]
            metas += batch["metadatas"]
        return cls(ids, texts, metas)

    def mask(self, filters: dict[str, Any] | None) -> np.ndarray | None:
        """1.0 for the chunks whose metadata matches the (already checked) exact-match filters."""
        if not filters:
            return None
        allowed = {k: set(v) if isinstance(v, list) else {v} for k, v in filters.items()}
        return np.array(
            [all(str(m.get(k)) in values for k, values in allowed.items()) for m in self.metadatas],
            dtype=np.float32,
        )

    def search(self, question: str, n: int, mask: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Up to ``n`` (position, BM25 score) pairs, best first; chunks sharing no term are left out."""
        query = terms(question)
        if not self.ids or not query:
            return []
        scores = np.asarray(self.bm25.get_scores(query), dtype=np.float64)
        if mask is not None:
            scores = scores * mask
        top = np.argsort(-scores, kind="stable")[:n]
        return [(int(i), float(scores[i])) for i in top if scores[i] > 0]
