"""Answer generators behind one interface, chosen by a spec string:

    extractive                         no LLM: the context sentences or list lines that answer the question
    transformers:/path/to/model        a causal LM from a local folder (CPU, or CUDA if present)
    openai:http://host:port/v1#model   any OpenAI-compatible endpoint (the LLM service, vLLM, a
                                       hosted API); key: $LLMOPS_GENERATOR_API_KEY, $OPENAI_API_KEY

The OpenAI generator waits ``LLMOPS_GENERATOR_TIMEOUT_S`` seconds (default 60) per attempt and
retries ``LLMOPS_GENERATOR_RETRIES`` times (default 1) before it gives up with
:class:`GeneratorTimeout`; a CPU-served LLM needs more than a GPU one. An error answer (a wrong
key) or an endpoint it cannot reach raises :class:`GeneratorFailed` with the endpoint's own message;
a prompt refused as over the model's context raises its subclass :class:`GeneratorContextExceeded`,
on which a RAG pipeline asks again with fewer contexts.

Each takes a ``GenerationRequest`` (the chat messages for LLMs, the question and contexts for the
extractive generator) and returns text. ``settings`` says what was used, for lineage, never a key.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from pathlib import Path
from types import FunctionType
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, Field

from llmops.errors import LlmopsError
from llmops.settings import first_value, settings_from_env
from llmops.tracing import annotate, trace_headers

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(\"'])|\n+")


class GeneratorError(LlmopsError, ValueError):
    """A generator spec or request that cannot be used; names the field."""


class GeneratorEndpointError(LlmopsError):
    """The generator's endpoint did not answer; a service relaying it answers ``http_status``."""

    http_status = 502


class GeneratorTimeout(GeneratorEndpointError, TimeoutError):
    """The generator's endpoint gave no answer within the configured time and retries."""

    http_status = 504


class GeneratorFailed(GeneratorEndpointError, RuntimeError):
    """The generator's endpoint answered with an error (e.g. a prompt over its context) or could
    not be reached."""


class GeneratorContextExceeded(GeneratorFailed):
    """The endpoint refused the prompt as longer than its model's context (OpenAI's and vLLM's
    ``context_length_exceeded``): a RAG pipeline asks again with fewer contexts."""


# how OpenAI, vLLM and the project's LLM service word a prompt over the context, for endpoints
# that set no error code
_CONTEXT_EXCEEDED = re.compile(r"maximum context length|context length|context is \d+ tokens", re.I)


class EndpointSettings(BaseModel):
    """How long the OpenAI generator waits, from ``LLMOPS_GENERATOR_TIMEOUT_S`` and
    ``LLMOPS_GENERATOR_RETRIES`` (settings of a deployment, not of a release: not in lineage)."""

    generator_timeout_s: float = Field(60.0, gt=0)
    generator_retries: int = Field(1, ge=0, le=10)


def endpoint_settings() -> EndpointSettings:
    return settings_from_env(EndpointSettings)


class GenerationRequest(BaseModel):
    messages: list[dict[str, str]]
    question: str
    contexts: list[str]
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)


class Generator(Protocol):
    """What a RAG pipeline calls (``generate_many``: each request's ``generate``, in order, which a
    local LLM decodes together). A generator that can count its prompt's tokens also has
    ``fits(request) -> bool`` (the pipeline then gives it as many contexts as fit); one behind an
    endpoint raises :class:`GeneratorContextExceeded` when the endpoint refuses the prompt's size."""

    settings: dict[str, Any]

    def generate(self, request: GenerationRequest) -> str: ...

    def generate_many(self, requests: list[GenerationRequest]) -> list[str]: ...


class ExtractiveGenerator:
    """Answers with the ``max_sentences`` context sentences or list lines that best answer the
    question, each followed by the number of the context it came from (``[2]``). Needs no LLM.

    A candidate's score adds up four signals, because each alone fails on its own questions:
    meaning (cosine similarity to the question), the question's rarer words it contains (IDF over
    the candidates, so "missing values" outweighs "data"), the question's form (a "which
    tools/types…" question wants a list line, "how many/when" one with a number) and the rank of
    its context (the retriever's judgement, as a small prior).

    The same chunks come back for many questions, so each sentence is embedded once and its
    vector kept (the ``cache_size`` most recently used): an evaluation embeds about a quarter
    fewer sentences, and a service answering questions on the same documents mostly none."""

    def __init__(self, embedder: Any, max_sentences: int = 2, cache_size: int = 8192):
        self.embedder = embedder
        self.max_sentences = max_sentences
        self.cache_size = cache_size
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # a service answers requests on several threads
        self.settings = {
            "backend": "extractive",
            "max_sentences": max_sentences,
            "scorer": "terms-form-rank-v2",
        }

    def generate(self, request: GenerationRequest) -> str:
        units = [
            (number, unit, is_list)
            for number, context in enumerate(request.contexts, start=1)
            for unit, is_list in answer_units(context)
        ]
        if not units:
            return "I do not know: nothing relevant was retrieved."
        scores = self.score(request.question, units)
        chosen: list[int] = []
        for i in np.argsort(-scores, kind="stable"):
            if all(units[i][1] not in units[j][1] and units[j][1] not in units[i][1] for j in chosen):
                chosen.append(int(i))
            if len(chosen) == self.max_sentences:
                break
        return " ".join(f"{units[i][1]} [{units[i][0]}]" for i in chosen)

    def generate_many(self, requests: list[GenerationRequest]) -> list[str]:
        return [self.generate(request) for request in requests]

    def score(self, question: str, units: list[tuple[int, str, bool]]) -> np.ndarray:
        from llmops.rag.lexical import terms

        vectors = self.vectors([question] + [u for _, u, _ in units])
        meaning = vectors[1:] @ vectors[0]  # unit vectors: cosine similarity
        unit_terms = [set(terms(u)) for _, u, _ in units]
        asked = set(terms(question))
        idf = {t: np.log(1 + len(units) / (1 + sum(t in ts for ts in unit_terms))) for t in asked}
        total = sum(idf.values()) or 1.0
        overlap = np.array([sum(idf[t] for t in asked & ts) / total for ts in unit_terms])
        form = _question_form(question)
        bonus = np.array(
            [
                (0.3 if form == "list" and is_list else 0.0)
                + (0.2 if form == "number" and _NUMBER.search(u) else 0.0)
                for _, u, is_list in units
            ]
        )
        rank = np.array([0.2 / number for number, _, _ in units])
        return meaning + 0.5 * overlap + bonus + rank  # weights measured on bench/rag_quality.py

    def vectors(self, texts: list[str]) -> np.ndarray:
        """The embedder's unit vectors of ``texts``, each text embedded at most once while it
        stays in the cache."""
        with self._lock:
            known = {text: self._vectors[text] for text in texts if text in self._vectors}
        missing = [text for text in dict.fromkeys(texts) if text not in known]
        if missing:
            known |= dict(zip(missing, self.embedder.embed(missing), strict=True))
        with self._lock:
            for text in texts:
                self._vectors[text] = known[text]
                self._vectors.move_to_end(text)
            while len(self._vectors) > self.cache_size:
                self._vectors.popitem(last=False)
        return np.stack([known[text] for text in texts])


_NUMBER = re.compile(r"\d")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_LIST_QUESTION = re.compile(
    r"^\s*(which|what)\b.*\b(tools?|types?|kinds?|species|instruments?|options?|steps?|parts?|"
    r"libraries|frameworks?|metrics?|list|names?|ones)\b|^\s*(list|name)\b",
    re.I,
)
_NUMBER_QUESTION = re.compile(
    r"^\s*(how (many|much|long|old|far|big|often)|when|what (year|date|time))\b", re.I
)


def _question_form(question: str) -> str:
    if _NUMBER_QUESTION.search(question):
        return "number"
    if _LIST_QUESTION.search(question):
        return "list"
    return "other"


def answer_units(text: str) -> list[tuple[str, bool]]:
    """What an extractive answer may quote from a chunk: list lines whole (a "Feature Store: Feast,
    Tecton" line answers "which tools…"), prose split into sentences; (text, is a list line)."""
    units: list[tuple[str, bool]] = []
    in_code = False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        if _LIST_ITEM.match(line):
            item = " ".join(_LIST_ITEM.sub("", line).split()).strip("*_ ")
            if len(item) >= 8:
                units.append((item, True))
            continue
        units += [(sentence, False) for sentence in split_sentences(line)]
    return units


def split_sentences(text: str) -> list[str]:
    """Prose sentences of a chunk: headings, code fences, table rows and fragments dropped."""
    keep = []
    for piece in _SENTENCE_END.split(text):
        piece = piece.strip().lstrip("-*> ").strip()
        if len(piece) < 25 or piece.startswith(("#", "```", "|")):
            continue
        keep.append(" ".join(piece.split()))
    return keep


class TransformersGenerator:
    """A causal LM from a local folder (never downloaded), through the transformers backend."""

    def __init__(self, model_path: str, backend: Any = None):
        """``backend``: a loaded backend of that model, or a function returning the one to use now."""
        if backend is None:
            from llmops.llm.backends import TransformersBackend

            path = Path(model_path).expanduser()
            if not (path / "config.json").is_file():
                raise GeneratorError(f"generator: {model_path!r} is not a model folder (no config.json)")
            backend = TransformersBackend(str(path))
        self._backend = backend
        self.settings = {"backend": "transformers", "model_path": self.backend.model_path}
        self.batch_size = int(
            getattr(self.backend, "max_batch", 16)
        )  # a RAG pipeline's batch: one decode step

    @property
    def backend(self) -> Any:  # a function: the one a composed LLM service serves now (it reloads)
        return self._backend() if isinstance(self._backend, FunctionType) else self._backend

    def fits(self, request: GenerationRequest) -> bool:
        """Whether the rendered prompt and ``max_tokens`` fit the model's context."""
        prompt = self.backend.render(request.messages)
        return self.backend.count_tokens(prompt) <= self.backend.max_context - request.max_tokens

    def generate(self, request: GenerationRequest) -> str:
        """The answer; a prompt over the context (a RAG pipeline first drops contexts until it
        fits, see :meth:`fits`) loses its beginning, so the question, which comes last, stays."""
        done = self.backend.complete(*self._prompt(request))
        annotate(provider="transformers", input_tokens=done.prompt_tokens,
                 output_tokens=done.completion_tokens, finish_reasons=[done.finish_reason])  # fmt: skip
        return done.text.strip()

    def generate_many(self, requests: list[GenerationRequest]) -> list[str]:
        """:meth:`generate` of each request, in order. The transformers backend's engine decodes
        requests submitted together in shared forward passes (left padding, masks and positions
        per row): greedy answers equal :meth:`generate`'s, several times faster on a CPU."""
        if getattr(self.backend, "engine", None) is None:
            return [self.generate(request) for request in requests]
        streams = [self.backend.stream(*self._prompt(request)) for request in requests]  # all submitted
        return [list(stream)[-1].text.strip() for stream in streams]  # each ends with its Completion

    def _prompt(self, request: GenerationRequest) -> tuple[str, Any]:
        from llmops.llm.types import SamplingParams

        prompt = self.backend.render(request.messages)
        room = self.backend.max_context - request.max_tokens
        if self.backend.count_tokens(prompt) > room:  # keep the end: the question comes last
            ids = self.backend.tokenizer(prompt, add_special_tokens=False)["input_ids"][-max(1, room) :]
            prompt = self.backend.tokenizer.decode(ids)
        return prompt, SamplingParams(max_tokens=request.max_tokens, temperature=request.temperature)


class OpenAIGenerator:
    """Chat completions from any OpenAI-compatible endpoint. ``http_client`` carries the
    connection when it is not plain TCP (a composed BentoML service answers on a Unix socket);
    ``timeout_s`` and ``retries`` default to :func:`endpoint_settings`."""

    parallel = 4  # requests in flight from one generate_many

    def __init__(
        self,
        base_url: str,
        model: str = "",
        *,
        timeout_s: float | None = None,
        retries: int | None = None,
        http_client: Any = None,
        api_key: str | None = None,
    ):
        from openai import OpenAI

        if not base_url.startswith(("http://", "https://")):
            raise GeneratorError(f"generator: {base_url!r} is not an http(s) URL")
        defaults = endpoint_settings() if timeout_s is None or retries is None else None
        self.timeout_s = timeout_s if timeout_s is not None else defaults.generator_timeout_s
        self.retries = retries if retries is not None else defaults.generator_retries
        key = api_key or first_value("LLMOPS_GENERATOR_API_KEY", "OPENAI_API_KEY") or "unused"
        self.base_url = base_url
        self.client = OpenAI(base_url=base_url, api_key=key, timeout=self.timeout_s,
                             max_retries=self.retries, http_client=http_client)  # fmt: skip
        self.model = model or self._call(lambda: self.client.models.list().data[0].id)
        self.settings = {"backend": "openai", "base_url": base_url, "model": self.model}

    def generate(self, request: GenerationRequest) -> str:
        reply = self._call(
            lambda: self.client.chat.completions.create(
                model=self.model,
                messages=request.messages,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                extra_headers=trace_headers(),  # a traced LLM service answers inside this trace
            )
        )
        usage, choice = getattr(reply, "usage", None), reply.choices[0]
        annotate(provider="openai", response_model=getattr(reply, "model", None),
                 response_id=getattr(reply, "id", None),
                 input_tokens=usage.prompt_tokens if usage else None,
                 output_tokens=usage.completion_tokens if usage else None,
                 finish_reasons=[choice.finish_reason] if choice.finish_reason else None)  # fmt: skip
        return (choice.message.content or "").strip()

    def generate_many(self, requests: list[GenerationRequest]) -> list[str]:
        """:meth:`generate` of each request, in order, ``parallel`` at a time: an endpoint that
        batches (vLLM, the LLM service) answers them together; a few do not swamp one that does not."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            return list(pool.map(self.generate, requests))

    def _call(self, call: Any) -> Any:
        from openai import APIConnectionError, APIStatusError, APITimeoutError

        try:
            return call()
        except APITimeoutError:  # before APIConnectionError: it is one
            raise GeneratorTimeout(
                f"generator: {self.base_url} gave no answer within {self.timeout_s:g} s "
                f"({1 + self.retries} attempt(s)); raise LLMOPS_GENERATOR_TIMEOUT_S or "
                "LLMOPS_GENERATOR_RETRIES for a slow endpoint"
            ) from None
        except APIConnectionError:
            raise GeneratorFailed(
                f"generator: cannot reach {self.base_url} ({1 + self.retries} attempt(s))"
            ) from None
        except APIStatusError as exc:
            message = f"generator: {self.base_url} answered {exc.status_code}: {_endpoint_message(exc)}"
            code = exc.body.get("code") if isinstance(exc.body, dict) else None
            if exc.status_code == 400 and (
                code == "context_length_exceeded" or _CONTEXT_EXCEEDED.search(_endpoint_message(exc))
            ):
                raise GeneratorContextExceeded(message) from None
            raise GeneratorFailed(message) from None


def _endpoint_message(error: Any, limit: int = 300) -> str:
    """The message of an OpenAI-style error body (``{"error": {"message": ...}}``), else its text;
    at most ``limit`` characters."""
    body = error.body
    message = body.get("message") if isinstance(body, dict) else None
    text = str(message or body or error.response.text or "no message").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def make_generator(spec: str, embedder: Any = None, field: str = "--generator") -> Generator:
    """The generator a spec names (see the module docstring)."""
    backend, _, target = spec.partition(":")
    if backend == "extractive" and not target:
        if embedder is None:
            raise GeneratorError(f"{field}: the extractive generator needs the index's embedder")
        return ExtractiveGenerator(embedder)
    if backend == "transformers" and target:
        return TransformersGenerator(target)
    if backend == "openai" and target:
        url, _, model = target.partition("#")
        return OpenAIGenerator(url, model)
    raise GeneratorError(
        f"{field}: {spec!r} is not a generator; use 'extractive', 'transformers:/model/folder' "
        f"or 'openai:http://host:port/v1#model'"
    )


def generator_spec(settings: dict[str, Any]) -> str:
    """The spec that rebuilds a generator from its recorded ``settings``."""
    backend = settings.get("backend")
    if backend == "extractive":
        return "extractive"
    if backend == "transformers":
        return f"transformers:{settings['model_path']}"
    if backend == "openai":
        return f"openai:{settings['base_url']}#{settings['model']}"
    raise GeneratorError(f"generator settings: unknown backend {backend!r}")
