"""Serve the promoted RAG release: answers with sources, or retrieval only.

    bentoml serve services.rag:Rag --host 127.0.0.1 --port 3000
    curl -s localhost:3000/query -H 'Content-Type: application/json' \\
        -d '{"question": "How does the gate compare a candidate with the champion?", "k": 4}'
    curl -s localhost:3000/retrieve -H 'Content-Type: application/json' \\
        -d '{"question": "drift thresholds", "k": 3, "filters": {"source": "drift.md"}}'

The release (``flows/evaluate_rag.py`` registers and promotes it) fixes the index version, the
embedding model, the exact prompt version and the generator settings; the service opens that
index in the Chroma store the release was evaluated in, or in $LLMOPS_CHROMA_PATH /
$LLMOPS_CHROMA_URL when set. Every /query and /retrieve is logged with the release that answered
it (question, sources and scores, answer, versions, latencies: llmops.request_log; with
LLMOPS_LOG_TEXT=false hashes and lengths instead of the text), and ``POST /feedback`` rates an
answer by its request_id (llmops.feedback; docs/serving.md).

Environment (every setting: docs/settings.md): LLMOPS_RAG_RELEASE (registry name, default
``rag``), LLMOPS_RAG_VERSION (a version or alias; default the champion), LLMOPS_GENERATOR (override
the release's generator: ``extractive``, ``transformers:/folder``, ``openai:http://host:port/v1#model``),
LLMOPS_GENERATOR_TIMEOUT_S and LLMOPS_GENERATOR_RETRIES (an ``openai:`` generator: seconds per
attempt, default 60, and retries, default 1), LLMOPS_API_KEY, LLMOPS_INFERENCE_LOG_DIR,
LLMOPS_MAX_QUESTION_CHARS, LLMOPS_MAX_K, LLMOPS_TIMEOUT_S, LLMOPS_MAX_BODY_BYTES (larger bodies: 413),
LLMOPS_TORCH_THREADS, LLMOPS_RELOAD_POLL_S (0: off), LLMOPS_LOG_TEXT, LLMOPS_FEEDBACK_WINDOW_DAYS.
With the LLM service in the same deployment, serve ``services.rag_llm:RagWithLLM`` instead
(BentoML composition, no URL to wire).

The service follows its alias without a restart (llmops.release_follower; docs/serving.md):
``POST /reload`` (loopback only, or with the API key), or every LLMOPS_RELOAD_POLL_S seconds,
resolves LLMOPS_RAG_VERSION again, and a new release (another index, prompt, generator or
retrieval mode) is opened and warmed up in full before it replaces the served one. Each request
reads the served release once and uses only that: its answer, versions and log row name it.
``/info`` shows the served release.

A shadow challenger (llmops.shadow; docs/serving.md): with LLMOPS_RAG_SHADOW=<version or alias>
(e.g. ``challenger``), that release also answers a sample of the requests (LLMOPS_SHADOW_SAMPLE,
default 0.1) on a worker thread after the champion's answer is computed, and its answer is logged
beside the champion's with ``role: "shadow"`` and the same request_id. The client only ever gets
the champion's answer; a full queue (LLMOPS_SHADOW_QUEUE) drops the sample; the shadow follows its
ref as the champion follows its own (/reload, LLMOPS_RELOAD_POLL_S).
"""

import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import bentoml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, create_model
from starlette.responses import JSONResponse

from llmops.feedback import Feedback, FeedbackReceipt, document_feedback
from llmops.inference_log import CHAMPION_ROLE
from llmops.rag.retriever import FILTER_KEYS, MAX_FILTER_CHARS, MAX_FILTER_VALUES
from llmops.registry import CHAMPION, ModelVersion
from llmops.release_follower import ReleaseFollower, Reload, Served, document_reload, reload_route
from llmops.serving import DEFAULT_MAX_BODY_BYTES, protect, settings_from_env
from llmops.shadow import Shadow
from llmops.supervision import die_with_supervisor
from llmops.tracing import annotate, text_attributes, tracer
from llmops.tracing import setup as setup_tracing

if TYPE_CHECKING:
    from llmops.rag.pipeline import RagPipeline
    from llmops.rag.release import RagRelease

die_with_supervisor()  # a worker ends with the bentoml serve process that started it
setup_tracing()  # before BentoML builds its request span's middleware (llmops.tracing)
logger = logging.getLogger("bentoml.service.rag")


class Settings(BaseModel):
    """Service settings; each field is read from ``LLMOPS_<FIELD>`` (see the module docstring)."""

    rag_release: str = "rag"
    rag_version: str | None = None  # None: whatever the champion alias points at
    generator: str | None = None  # None: the release's own generator
    api_key: SecretStr | None = None
    inference_log_dir: str | None = None  # a folder or s3://bucket/prefix
    max_question_chars: int = Field(2000, ge=1)
    max_k: int = Field(20, ge=1, le=50)
    timeout_s: float = Field(60.0, gt=0)
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024)  # larger request bodies: 413
    torch_threads: int | None = Field(None, ge=1)  # None: the declared cpu (llmops.threads)
    reload_poll_s: float = Field(0.0, ge=0)  # 0: reload only on POST /reload
    rag_shadow: str | None = None  # a version or alias that also answers a sample (llmops.shadow)


SETTINGS = settings_from_env(Settings)


# what str.strip() removes, as a character class that Python and ECMAScript regexes read alike:
# the document's pattern for a question (a character outside it) says what _question accepts
WHITESPACE = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())
NOT_ONLY_WHITESPACE = "[^" + "".join(f"\\u{ord(c):04x}" for c in WHITESPACE) + "]"


def _question(text: str) -> str:
    text = text.strip()
    if not text:
        raise ValueError("must not be empty or only whitespace")
    return text


def _filters(value: BaseModel | None) -> dict[str, Any] | None:
    """The set filters as the dict the retriever takes (None: no filter)."""
    from llmops.rag.retriever import chroma_where

    filters = value.model_dump(exclude_none=True) if value is not None else {}
    chroma_where(filters)  # the retriever's own check, so the two cannot disagree
    return filters or None


# one optional field per filter key, so the OpenAPI document enumerates them and an unknown key
# is a 400 naming it: an exact value, or a non-empty list of values any of which matches (bounded
# as the retriever bounds them)
FilterValue = Annotated[str, Field(max_length=MAX_FILTER_CHARS)]
FilterValues = Annotated[list[FilterValue], Field(min_length=1, max_length=MAX_FILTER_VALUES)]
FilterKeys = create_model(
    "Filters",
    __config__=ConfigDict(extra="forbid"),
    **{key: (FilterValue | FilterValues | None, None) for key in FILTER_KEYS},
)
Question = Annotated[
    str,
    Field(
        min_length=1,
        max_length=SETTINGS.max_question_chars,
        json_schema_extra={"pattern": NOT_ONLY_WHITESPACE},
    ),
    AfterValidator(_question),
]
K = Annotated[int, Field(ge=1, le=SETTINGS.max_k)]
Filters = Annotated[FilterKeys | None, AfterValidator(_filters)]


class SourceOut(BaseModel):
    number: int  # the [n] the answer cites
    path: str
    chunk: int
    score: float
    text: str


class Answer(BaseModel):
    answer: str
    sources: list[SourceOut]
    versions: dict[str, str]  # release, index, embedding model, prompt, generator
    request_id: str


class Retrieved(BaseModel):
    sources: list[SourceOut]
    versions: dict[str, str]
    request_id: str


@dataclass(frozen=True)
class LiveRag:
    """One opened release: what a request reads once and uses alone."""

    release: "RagRelease"
    pipeline: "RagPipeline"


class ShadowRequest(NamedTuple):
    """A sampled request as the client sent it, for the shadow challenger to answer again."""

    route: str
    request_id: str
    question: str
    k: int | None  # None: the challenger's own k
    filters: dict[str, Any] | None


RESOURCES = {"cpu": "2", "memory": "2Gi"}


@bentoml.service(traffic={"timeout": SETTINGS.timeout_s}, resources=RESOURCES, workers=1)
class Rag:
    """Retrieval-augmented answers from the promoted release (champion by default)."""

    def __init__(self) -> None:
        from llmops.feedback import RequestLog
        from llmops.inference_log import InferenceLogger
        from llmops.threads import configure_torch_threads

        # before any model loads: the embedder and an in-process LLM share the declared CPUs
        self.threads = configure_torch_threads(SETTINGS.torch_threads, RESOURCES["cpu"])
        self.follower = ReleaseFollower(
            SETTINGS.rag_release,
            SETTINGS.rag_version,
            self._open,
            poll_s=SETTINGS.reload_poll_s,
            retire=self._retire,
            log=logger,
        )
        served = self.follower.start()
        self.inference_log = InferenceLogger(SETTINGS.inference_log_dir, served.version.name)
        self.request_log = RequestLog(self.inference_log, served.version.name)  # rows, answered ids
        self.shadow = Shadow(SETTINGS.rag_release, SETTINGS.rag_shadow, self._open, self._shadow_answer,
                             self._shadow_failed, poll_s=SETTINGS.reload_poll_s, retire=self._retire,
                             log=logger)  # fmt: skip
        self.shadow.start()  # no challenger (an unset or unresolvable ref): no shadow, said once

    def _open(self, version: ModelVersion) -> LiveRag:
        """The whole pipeline of a release (index, embedder, prompt, generator, retrieval mode),
        warmed up: the follower swaps it in only once it can answer."""
        from llmops.rag.index import chroma_location
        from llmops.rag.release import load_release, open_pipeline

        release, prompt = load_release(version)
        store = chroma_location() if _store_overridden() else release.chroma
        spec = self._generator_spec(release)
        pipeline = open_pipeline(
            store,
            release.index.version,
            prompt,
            spec,
            versions={"release": version.tag, "generator": spec.split("#")[0]},
            retrieval=release.retrieval,  # the ranking the gate evaluated
        )
        pipeline.retriever.embedder.embed(["warm up"])  # load the model before the first request
        logger.info(
            "serving %s: index %s in %s, %s, generator %s",
            version.tag,
            release.index.version,
            store,
            pipeline.versions["prompt"],
            spec,
        )
        return LiveRag(release, pipeline)

    def _retire(self, live: LiveRag) -> None:
        """An in-process LLM generator of a release no longer served stops once idle."""
        close = getattr(getattr(live.pipeline.generator, "backend", None), "close", None)
        if close is not None:
            close()

    def _generator_spec(self, release) -> str:
        """LLMOPS_GENERATOR, else the release's own generator (services.rag_llm composes an LLM)."""
        from llmops.rag.generators import generator_spec

        return SETTINGS.generator or generator_spec(release.generator)

    def __is_ready__(self) -> bool:
        return self.inference_log.alive

    @bentoml.api
    def query(self, question: Question, k: K | None = None, filters: Filters = None) -> Answer:
        """Answer ``question`` from the ``k`` most similar chunks (optionally filtered), with sources:
        the best ranked of them that fit the LLM's context. An LLM endpoint that answers an error
        (or refuses even one chunk as over its context): 502; one that does not answer in time: 504."""
        from llmops.rag.generators import GeneratorEndpointError

        started = time.perf_counter()
        asked = k  # as sent: a shadow challenger answers with its own k when there is none
        served = self.follower.served  # read once: a reload during this request must not mix two
        live, k = served.release, k or served.release.release.k
        request_id = uuid.uuid4().hex
        self._trace(served, request_id, question)
        hits = live.pipeline.retriever.retrieve(question, k, filters)
        retrieved = time.perf_counter()
        try:
            result = live.pipeline.answer_from(question, hits)
        except GeneratorEndpointError as exc:  # not ours to hide behind a bare 500
            logger.warning("query answered %d: %s", exc.http_status, exc)
            ranked = [{"source": h.source, "chunk": h.position, "score": h.score} for h in hits]
            self._log(served, "/query", request_id, question, ranked, None, (started, retrieved),
                      status=exc.http_status, error=str(exc))  # fmt: skip
            self._offer_shadow(ShadowRequest("/query", request_id, question, asked, filters))
            return JSONResponse({"error": str(exc)}, status_code=exc.http_status)  # BentoML passes it on
        sources = [SourceOut(**s.model_dump()) for s in result.sources]
        ranked = [{"source": s.path, "chunk": s.chunk, "score": s.score} for s in sources]
        self._log(served, "/query", request_id, question, ranked, result.answer, (started, retrieved))
        self._offer_shadow(ShadowRequest("/query", request_id, question, asked, filters))
        return Answer(answer=result.answer, sources=sources, versions=result.versions, request_id=request_id)

    @bentoml.api
    def retrieve(self, question: Question, k: K | None = None, filters: Filters = None) -> Retrieved:
        """The ``k`` most similar chunks, without generating an answer."""
        started = time.perf_counter()
        asked = k
        served = self.follower.served
        live, k = served.release, k or served.release.release.k
        request_id = uuid.uuid4().hex
        self._trace(served, request_id, question)
        hits = live.pipeline.retriever.retrieve(question, k, filters)
        sources = [
            SourceOut(number=n, path=h.source, chunk=h.position, score=h.score, text=h.text)
            for n, h in enumerate(hits, 1)
        ]
        ranked = [{"source": s.path, "chunk": s.chunk, "score": s.score} for s in sources]
        self._log(served, "/retrieve", request_id, question, ranked, None, (started, time.perf_counter()))
        self._offer_shadow(ShadowRequest("/retrieve", request_id, question, asked, filters))
        return Retrieved(sources=sources, versions=live.pipeline.versions, request_id=request_id)

    @bentoml.api(route="/reload")
    async def reload(self, ctx: bentoml.Context) -> Reload:
        """Serve the release the alias points at now, if it moved (and the shadow's, LLMOPS_RAG_SHADOW)."""
        return await reload_route(self.follower, ctx, also=self.shadow.reload)

    @bentoml.api(route="/info")
    def info(self) -> dict[str, Any]:
        """The served release and what it is made of, and the shadow challenger (null: none)."""
        served = self.follower.served
        return {"release": served.version.name, "version": served.version.version, "ref": self.follower.ref,
                "versions": served.release.pipeline.versions, "k": served.release.release.k,
                "reload_poll_s": SETTINGS.reload_poll_s, "shadow": self.shadow.info()}  # fmt: skip

    @bentoml.api(route="/feedback", input_spec=Feedback)
    def feedback(self, request_id: str, rating: int, correction: str | None = None,
                 comment: str | None = None) -> FeedbackReceipt:  # fmt: skip
        """Rate an answer by its ``request_id``: 1 or -1, optionally with the answer it should have
        been and a comment. 404 for an id this service did not answer in the last
        LLMOPS_FEEDBACK_WINDOW_DAYS days; a second rating replaces the first."""
        body = Feedback(request_id=request_id, rating=rating, correction=correction, comment=comment)
        return self.request_log.feedback(body)

    def _trace(self, served, request_id: str, question: str) -> None:
        """The request's span (BentoML's) names the release that answers it (llmops.tracing)."""
        if tracer() is None:
            return
        versions = served.release.pipeline.versions
        annotate(request_id=request_id, release=served.version.name, alias=SETTINGS.rag_version or CHAMPION,
                 release_version=served.version.version, index_version=versions["index_version"],
                 embedding_model=versions["embedding_model"], prompt=versions["prompt"],
                 generator=versions.get("generator"), retrieval_mode=versions["retrieval"],
                 **text_attributes(question, self.request_log.keep_text))  # fmt: skip

    def _offer_shadow(self, request: ShadowRequest) -> None:
        """Hand a sampled request to the shadow challenger: a draw and a queue put, never a wait."""
        if self.shadow.wants():
            self.shadow.submit(request)

    def _shadow_answer(self, served: Served[LiveRag], request: ShadowRequest) -> None:
        """The challenger answers a sampled request, on a shadow worker thread once the client has
        the champion's answer, and logs its row (``role: "shadow"``, the same request_id)."""
        from llmops.request_log import SHADOW_ROLE

        started = time.perf_counter()
        live, k = served.release, request.k or served.release.release.k
        hits = live.pipeline.retriever.retrieve(request.question, k, request.filters)
        retrieved = time.perf_counter()
        ranked = [{"source": h.source, "chunk": h.position, "score": h.score} for h in hits]
        answer = None
        if request.route == "/query":
            result = live.pipeline.answer_from(request.question, hits)  # raises as the champion's would
            ranked = [{"source": s.path, "chunk": s.chunk, "score": s.score} for s in result.sources]
            answer = result.answer
        self._log(served, request.route, request.request_id, request.question, ranked, answer,
                  (started, retrieved), role=SHADOW_ROLE)  # fmt: skip

    def _shadow_failed(self, served: Served[LiveRag], request: ShadowRequest, error: Exception,
                       latency_ms: float) -> None:  # fmt: skip
        """The shadow row of a request the challenger failed on: 502/504 from an LLM endpoint, else 500."""
        from llmops.rag.generators import GeneratorEndpointError
        from llmops.request_log import SHADOW_ROLE, one_line, rag_request_row

        status = error.http_status if isinstance(error, GeneratorEndpointError) else 500
        self.request_log.shadow(rag_request_row(
            request_id=request.request_id, model=served.version.name, model_version=served.version.version,
            route=request.route, versions=served.release.pipeline.logged_versions(),
            question=request.question, sources=[], answer=None,
            latency_ms={"retrieve": None, "generate": None, "total": latency_ms},
            keep_text=self.request_log.keep_text, status=status, error=one_line(error), role=SHADOW_ROLE,
        ))  # fmt: skip

    def _log(self, served, route, request_id, question, ranked, answer, times, status=200, error=None,
             role=CHAMPION_ROLE) -> None:  # fmt: skip
        """One ``rag_request`` row; ``times``: perf_counter at the start and once retrieval was done;
        ``role``: "shadow" for the challenger's (never rated), else the champion's."""
        from llmops.request_log import SHADOW_ROLE, elapsed_ms, one_line, rag_request_row

        started, retrieved = times
        latency = {"retrieve": elapsed_ms(started, retrieved), "total": elapsed_ms(started),
                   "generate": elapsed_ms(retrieved) if route == "/query" else None}  # fmt: skip
        write = self.request_log.shadow if role == SHADOW_ROLE else self.request_log.request
        write(rag_request_row(
            request_id=request_id, model=served.version.name, model_version=served.version.version,
            route=route, versions=served.release.pipeline.logged_versions(), question=question,
            sources=ranked, answer=answer, latency_ms=latency, keep_text=self.request_log.keep_text,
            status=status, error=one_line(error), role=role,
        ))  # fmt: skip

    @bentoml.on_shutdown
    def shut_down(self) -> None:
        self.shadow.close()  # first: a challenger's answer in progress still reaches the log
        self.follower.close()
        self.inference_log.close()


def _store_overridden() -> bool:
    from llmops.paths import chroma_overridden

    return chroma_overridden()


def rag_openapi(doc: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document lists /query's answers when its LLM endpoint fails, /reload's and /feedback's."""
    from llmops.openapi_doc import ERROR_RESPONSE

    doc = document_feedback(document_reload(doc))
    responses = doc.get("paths", {}).get("/query", {}).get("post", {}).get("responses", {})
    responses.setdefault(
        "502", {"description": "The LLM endpoint answered an error or is unreachable", **ERROR_RESPONSE}
    )
    responses.setdefault("504", {"description": "The LLM endpoint gave no answer in time", **ERROR_RESPONSE})
    return doc


protect(Rag, SETTINGS.api_key, max_body_bytes=SETTINGS.max_body_bytes, openapi=rag_openapi)
