"""Retrieve, render the prompt with the retrieved context as data, generate: one answer with
its sources and the versions that produced it."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from llmops.prompts import PromptError, PromptTemplate
from llmops.rag.generators import GenerationRequest, Generator, GeneratorContextExceeded
from llmops.rag.retriever import Hit, Retriever

log = logging.getLogger(__name__)


class Source(BaseModel):
    number: int  # the [n] the answer cites
    path: str
    chunk: int
    score: float
    text: str


class RagAnswer(BaseModel):
    answer: str
    sources: list[Source]
    versions: dict[str, str]


def format_context(hits: list[Hit]) -> str:
    """Numbered context blocks: ``[1] docs/drift.md#3`` then the chunk text."""
    return "\n\n".join(f"[{n}] {hit.source}#{hit.position}\n{hit.text}" for n, hit in enumerate(hits, 1))


class RagPipeline:
    def __init__(
        self,
        retriever: Retriever,
        prompt: PromptTemplate,
        generator: Generator,
        versions: dict[str, str] | None = None,
    ):
        missing = {"question", "context"} - set(prompt.input_variables)
        if missing:
            raise PromptError(f"prompt {prompt.name!r}: a RAG prompt needs the variables {sorted(missing)}")
        self.retriever, self.prompt, self.generator = retriever, prompt, generator
        self.versions = {
            "index_version": retriever.index_version,
            "embedding_model": retriever.embedder.model_id,
            "retrieval": retriever.settings.mode,
            "prompt": f"{prompt.name}@{prompt.version}",
            **(versions or {}),
        }

    def logged_versions(self) -> dict[str, Any]:
        """What a request's log row names (``llmops.request_log``): the versions that answered it
        and the ranking's settings."""
        ranking = self.retriever.settings
        return {"index": self.versions["index_version"], "prompt": self.versions["prompt"],
                "generator": self.versions.get("generator"), "retrieval_mode": ranking.mode,
                "dense_weight": ranking.dense_weight, "bm25_weight": ranking.bm25_weight}  # fmt: skip

    def request(self, question: str, hits: list[Hit]) -> GenerationRequest:
        params: dict[str, Any] = self.prompt.parameters
        return GenerationRequest(
            messages=self.prompt.render(question=question, context=format_context(hits)),
            question=question,
            contexts=[hit.text for hit in hits],
            max_tokens=int(params.get("max_tokens", 256)),
            temperature=float(params.get("temperature", 0.0)),
        )

    def answer(self, question: str, k: int = 4, filters: dict[str, Any] | None = None) -> RagAnswer:
        hits = self.retriever.retrieve(question, k, filters)
        return self.answer_from(question, hits)

    def answer_from(self, question: str, hits: list[Hit]) -> RagAnswer:
        """The generator's answer from ``hits``, or from as many of the best ranked of them as
        its context holds; ``sources`` are the contexts it was given, numbered as it cited them.
        A generator that counts tokens (:meth:`fits`) is asked once; an endpoint that refuses a
        prompt over its context is asked again with one context fewer each time."""
        used = list(hits)
        fits = getattr(self.generator, "fits", None)
        while fits is not None and len(used) > 1 and not fits(self.request(question, used)):
            used.pop()
        text = ""
        while used:
            try:
                text = self.generator.generate(self.request(question, used))
                break
            except GeneratorContextExceeded:
                if len(used) == 1:
                    raise
                used.pop()
        if len(used) < len(hits):
            log.warning("question answered from %d of %d contexts: the rest is over the generator's context",
                        len(used), len(hits))  # fmt: skip
        return RagAnswer(
            answer=text or "I do not know: nothing relevant was retrieved.",
            sources=[
                Source(number=n, path=h.source, chunk=h.position, score=h.score, text=h.text)
                for n, h in enumerate(used, 1)
            ],
            versions=self.versions,
        )
