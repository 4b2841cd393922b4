"""Text helpers every domain uses: content words and sentences.

The grounded fine-tune data (``rag.grounded_data``) and the held-out evaluation of a tuned LLM
(``llm.lm_eval``) compare answers with their sources by these words; retrieval has its own,
stemmed terms (``rag.lexical``)."""

from __future__ import annotations

import re

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(])")
_TERM = re.compile(r"[a-z0-9_]+")
_STOP = frozenset(
    "a an and are as at be by can do does for from how i if in is it its my of on or the this to what "
    "when where which who why with you your that than then there these they not no".split()
)


def terms(text: str) -> list[str]:
    """Lowercase content words (stop words dropped): what lexical retrieval and support compare."""
    return [t for t in _TERM.findall(text.lower()) if t not in _STOP]


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(" ".join(text.split())) if s.strip()]
