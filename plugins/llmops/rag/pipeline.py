"""Retrieve, render the prompt with the retrieved context as data, generate: one answer with
its sources and the versions that produced it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from llmops.prompts import PromptError, PromptTemplate
from llmops.rag.generators import GenerationRequest, Generator, GeneratorContextExceeded
from llmops.rag.retriever import Hit, Retriever
from llmops.tracing import span

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

    def fitted(self, question: str, hits: list[Hit]) -> list[Hit]:
        """The best ranked of ``hits`` whose prompt fits the generator's context, by its own count
        of tokens (:meth:`fits`); all of them for a generator that cannot count."""
        used = list(hits)
        fits = getattr(self.generator, "fits", None)
        while fits is not None and len(used) > 1 and not fits(self.request(question, used)):
            used.pop()
        return used

    def answer_from(self, question: str, hits: list[Hit]) -> RagAnswer:
        """The generator's answer from ``hits``, or from as many of the best ranked of them as
        its context holds; ``sources`` are the contexts it was given, numbered as it cited them.
        A generator that counts tokens (:meth:`fits`) is asked once; an endpoint that refuses a
        prompt over its context is asked again with one context fewer each time."""
        used = self.fitted(question, hits)
        text = ""
        while used:
            with span("render_prompt", prompt=self.versions["prompt"], contexts=len(used)):
                request = self.request(question, used)
            try:
                with span("generate", operation="chat", request_model=self.versions.get("generator"),
                          max_tokens=request.max_tokens, temperature=request.temperature):  # fmt: skip
                    text = self.generator.generate(request)  # the generator adds its token counts
                break
            except GeneratorContextExceeded:
                if len(used) == 1:
                    raise
                used.pop()
        return self._answer(text, used, hits)

    def answer_many(
        self,
        questions: list[str],
        hits: list[list[Hit]],
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[RagAnswer]:
        """:meth:`answer_from` for each question, in batches of ``batch_size`` (default: the
        generator's ``batch_size``, else 16) through the generator's ``generate_many``: a local LLM
        decodes a batch in shared forward passes. Each prompt is fitted as :meth:`answer_from`
        fits it; a batch an endpoint refuses as too long is answered one question at a time (each
        then drops contexts until it fits). ``progress(answered, total)`` after each batch."""
        pairs = list(zip(questions, hits, strict=True))
        many = getattr(self.generator, "generate_many", None)
        size = max(1, batch_size or int(getattr(self.generator, "batch_size", 16)))
        answers: list[RagAnswer] = []
        for start in range(0, len(pairs), size):
            batch = pairs[start : start + size]
            if many is None:
                answers += [self.answer_from(q, h) for q, h in batch]
            else:
                answers += self._answer_batch(many, batch)
            if progress is not None:
                progress(len(answers), len(pairs))
        return answers

    def _answer_batch(self, many: Callable, batch: list[tuple[str, list[Hit]]]) -> list[RagAnswer]:
        used = [self.fitted(q, h) for q, h in batch]
        asked = [i for i, u in enumerate(used) if u]  # no context: no question to the generator
        try:
            texts = many([self.request(batch[i][0], used[i]) for i in asked])
        except GeneratorContextExceeded:
            return [self.answer_from(q, h) for q, h in batch]
        found = dict(zip(asked, texts, strict=True))
        return [self._answer(found.get(i, ""), used[i], h) for i, (_, h) in enumerate(batch)]

    def _answer(self, text: str, used: list[Hit], hits: list[Hit]) -> RagAnswer:
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
