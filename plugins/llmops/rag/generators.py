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
from typing import Any, NamedTuple, Protocol

import numpy as np
from pydantic import BaseModel, Field

from llmops.errors import LlmopsError
from llmops.settings import first_value, settings_from_env
from llmops.tracing import annotate, trace_headers

# a sentence ends at . ! or ? before a capital, a quote, a code mark or a parenthesis, except after
# an abbreviation ("e.g. The", "vs. Django")
_SENTENCE_END = re.compile(
    r"(?<!\be\.g\.)(?<!\bi\.e\.)(?<!\betc\.)(?<!\bvs\.)(?<!\bcf\.)(?<!\bNo\.)"
    r"(?<=[.!?])\s+(?=[A-Z`(\"'*\[])|\n+"
)


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

    The candidates come from :func:`answer_units`: a context is read as Markdown or
    reStructuredText (``llmops.rag.markup``), so a sentence wrapped over several lines is one
    candidate, and markup (badges, images, HTML, link-only lines, directives) is never quoted.

    A candidate's score adds up four signals, because each alone fails on its own questions:
    meaning (cosine similarity to the question), the question's rarer words it contains (IDF over
    the candidates, so "missing values" outweighs "data"), the question's form (a "which…" or
    "what are…" question wants a list item, not the line that introduces the list; "how
    many/when" one with a number) and the rank of its context (the retriever's judgement, as a
    small prior).

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
            "scorer": "terms-form-rank-v3",
        }

    def generate(self, request: GenerationRequest) -> str:
        units: list[tuple[int, str, str, int]] = []
        for number, context in enumerate(request.contexts, start=1):
            first = len(units)
            units += [
                (number, unit.text, unit.kind, first + unit.intro if unit.intro >= 0 else -1)
                for unit in answer_units(context)
            ]
        scores = self.score(request.question, units) if units else np.zeros(0)
        if not np.isfinite(scores).any():
            return "I do not know: nothing relevant was retrieved."
        chosen: list[int] = []
        for i in np.argsort(-scores, kind="stable"):
            if not np.isfinite(scores[i]):
                break
            if all(units[i][1] not in units[j][1] and units[j][1] not in units[i][1] for j in chosen):
                chosen.append(int(i))
            if len(chosen) == self.max_sentences:
                break
        return " ".join(f"{units[i][1]} [{units[i][0]}]" for i in chosen)

    def generate_many(self, requests: list[GenerationRequest]) -> list[str]:
        return [self.generate(request) for request in requests]

    def score(self, question: str, units: list[tuple[int, str, str, int]]) -> np.ndarray:
        """Each unit's score, ``-inf`` for one that cannot answer this question; a unit is
        (context number, text, :class:`AnswerUnit` kind, index of its list's intro or -1).

        A "which…"/"what are…" question takes the list item, never the intro: the intro
        restates the question, its items answer it, so each item scores at least what its
        intro scores (plus a tenth of its own score, so the item that fits best comes first).
        A command (short code block) answers only a "how do I…" question and takes its intro's
        score the same way; the intro stays a candidate (it says what the command does)."""
        from llmops.rag.lexical import terms

        vectors = self.vectors([question] + [u for _, u, _, _ in units])
        meaning = vectors[1:] @ vectors[0]  # unit vectors: cosine similarity
        unit_terms = [set(terms(u)) for _, u, _, _ in units]
        asked = set(terms(question))
        idf = {t: np.log(1 + len(units) / (1 + sum(t in ts for ts in unit_terms))) for t in asked}
        total = sum(idf.values()) or 1.0
        overlap = np.array([sum(idf[t] for t in asked & ts) / total for ts in unit_terms])
        form = _question_form(question)
        bonus = np.array(
            [
                (0.3 if form == "list" and kind == ITEM else 0.0)
                + (0.2 if form == "number" and _NUMBER.search(u) else 0.0)
                + (0.2 if form == "how" and kind == COMMAND else 0.0)
                for _, u, kind, _ in units
            ]
        )
        rank = np.array([0.2 / number for number, _, _, _ in units])
        own = meaning + 0.5 * overlap + bonus + rank  # weights measured on bench/rag_quality.py
        score = own.copy()
        answered: set[int] = set()  # intros whose list items answer instead
        for i, (_, _, kind, intro) in enumerate(units):
            if intro >= 0 and (form, kind) in (("list", ITEM), ("how", COMMAND)):
                score[i] = max(own[i], own[intro]) + 0.1 * own[i]
                if kind == ITEM:
                    answered.add(intro)
            if form != "how" and kind == COMMAND:
                score[i] = -np.inf
        score[list(answered)] = -np.inf
        return score

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
_LIST_QUESTION = re.compile(
    r"^\s*which\s+(\S+\s+){0,2}?\w+s\s+(do|does|did|is|are|can|could|should|will|would|has|have)\b"
    r"|^\s*what are\b|^\s*(what|which)\b.*\b(tools?|types?|kinds?|species|instruments?|options?|"
    r"steps?|parts?|libraries|frameworks?|metrics?|list|names?|ones)\b|^\s*(list|name)\b",
    re.I,
)
_NUMBER_QUESTION = re.compile(
    r"^\s*(how (many|much|long|old|far|big|often)|when|what (year|date|time))\b", re.I
)
_FENCE_LINE = re.compile(r"^\s{0,3}(?:```|~~~).*$", re.M)
_TABLE_RULE = re.compile(r"^[\s|:+=-]+$")
_HOW_QUESTION = re.compile(r"^\s*how (do|can|should|would) (i|you|we)\b|^\s*how to\b", re.I)
ITEM, INTRO, SENTENCE, COMMAND, ROW = "item", "intro", "sentence", "command", "row"  # AnswerUnit.kind
MAX_COMMAND = 160  # a code block this short (at most 3 lines) may answer "how do I…"


def _question_form(question: str) -> str:
    if _NUMBER_QUESTION.search(question):
        return "number"
    if _LIST_QUESTION.search(question):
        return "list"
    if _HOW_QUESTION.search(question):
        return "how"
    return "other"


class AnswerUnit(NamedTuple):
    text: str
    kind: str  # ITEM: a list item; INTRO: a sentence introducing a list; SENTENCE: other prose;
    # COMMAND: a short code block (a command line); ROW: a table row (its cells joined by " | ")
    intro: int = -1  # an item's: the index of its list's intro among the chunk's units, or -1


def answer_units(text: str, kind: str = "auto") -> list[AnswerUnit]:
    """What an extractive answer may quote from a chunk: list items whole (a "Feature Store:
    Feast, Tecton" item answers "which tools…"), prose paragraphs (soft-wrapped lines joined)
    split into sentences, table rows (not the header), and short code blocks (a command answers
    "how do I…"). Headings, longer code and markup are never quoted; ``kind`` is the chunk's
    markup (``llmops.rag.markup``; "auto" guesses it). A chunk that starts inside a fenced code
    block (its first fence is a bare closing one and the fences do not pair up) is read as such."""
    from llmops.rag import markup

    fences = _FENCE_LINE.findall(text)
    if len(fences) % 2 and fences[0].strip() in ("```", "~~~"):
        text = fences[0].strip() + "\n" + text
    units: list[AnswerUnit] = []
    intro = -1  # the sentence introducing the list or command being read
    found_blocks = [b for b in markup.blocks(text, kind) if b.kind != markup.MARKUP]
    for n, block in enumerate(found_blocks):
        if block.kind != markup.ITEM:
            intro = -1 if block.kind != markup.CODE else intro
        if block.kind == markup.ITEM:
            item = block.text.strip("*_ ")
            if len(item) >= 8:
                units.append(AnswerUnit(item, ITEM, intro))
        elif block.kind == markup.PROSE:
            found = split_sentences(block.text)
            after = found_blocks[n + 1].kind if n + 1 < len(found_blocks) else None
            leads = block.text.endswith(":") and after in (markup.ITEM, markup.CODE)
            units += [
                AnswerUnit(s, INTRO if leads and i == len(found) - 1 else SENTENCE)
                for i, s in enumerate(found)
            ]
            if leads and found and units[-1].kind == INTRO:
                intro = len(units) - 1
        elif block.kind == markup.CODE:
            lines = [line.strip() for line in block.text.splitlines() if line.strip()]
            command = " ".join(lines)
            if len(lines) <= 3 and 8 <= len(command) <= MAX_COMMAND:
                units.append(AnswerUnit(command, COMMAND, intro))
            intro = -1
        elif block.kind == markup.TABLE:
            rows = block.text.splitlines()
            header = 1 if len(rows) > 1 and _TABLE_RULE.match(rows[1]) else 0
            for row in rows[header:]:
                cells = [c.strip() for c in row.strip().strip("|").split("|")]
                line = " | ".join(c for c in cells if c)
                if not _TABLE_RULE.match(row) and len(line) >= 25:
                    units.append(AnswerUnit(line, ROW))
    return units


def split_sentences(text: str) -> list[str]:
    """Prose sentences of a reflowed paragraph: headings, code fences, table rows and fragments
    dropped."""
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
