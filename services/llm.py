"""An OpenAI-compatible LLM API: vLLM on a GPU, transformers on a CPU (or any CUDA device).

    LLMOPS_LLM_MODEL=/models/my-llm bentoml serve services.llm:LLM --host 127.0.0.1 --port 3001
    curl -s localhost:3001/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "llm", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32}'

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:3001/v1", api_key="unused")

Routes (llmops.llm.openai_api): GET /v1/models, POST /v1/chat/completions and /v1/completions,
streaming with "stream": true. The /v1 routes are described in the service's OpenAPI document
(/docs.json; llmops.llm.openai_schemas). The model is LLMOPS_LLM_MODEL (a local folder, or a hub
id when the machine is online), else the registry's LLMOPS_LLM_RELEASE (default ``llm``) champion,
as flows/finetune_llm.py promotes it: merged weights, or the base model with the LoRA adapter
(LLMOPS_LLM_VERSION pins a version instead of the champion). It is served under the name
LLMOPS_LLM_SERVED_NAME (default: the registry name, ``llm``).

A registry release is followed without a restart (llmops.release_follower; docs/serving.md):
``POST /reload`` (loopback only, or with the API key), or every LLMOPS_RELOAD_POLL_S seconds,
resolves LLMOPS_LLM_VERSION again; a new release is loaded in full beside the served one (memory
for two models, briefly), then swapped in. Each request reads the served model once and generates
with it alone; the old model's engine stops once its last request is answered. A folder
(LLMOPS_LLM_MODEL) is not followed. ``/info`` shows the served release.

Every completion that reaches the model is logged when it ends (a stream when it ends, or when its
client goes away) with the release that answered it, to LLMOPS_INFERENCE_LOG_DIR under the release
name (the served name for a folder model); LLMOPS_LOG_TEXT=false logs hashes and lengths instead
of the prompt and answer. ``POST /feedback`` rates an answer by its completion id
(llmops.feedback; docs/serving.md).

Environment: LLMOPS_LLM_BACKEND (auto | transformers | vllm; auto picks vLLM on CUDA when
installed), LLMOPS_LLM_MAX_TOKENS (largest max_tokens a request may ask, 512),
LLMOPS_LLM_MAX_BATCH (transformers: requests sharing one decode step, 32; more wait for a slot),
LLMOPS_TORCH_THREADS (torch's CPU threads; default: the service's declared cpu, 2),
LLMOPS_LLM_GPU_MEMORY_UTILIZATION (vLLM, 0.9), LLMOPS_LLM_MAX_MODEL_LEN (vLLM; default the
model's), LLMOPS_API_KEY (bearer key for everything but the probes), LLMOPS_TIMEOUT_S,
LLMOPS_RELOAD_POLL_S (0: off), LLMOPS_INFERENCE_LOG_DIR, LLMOPS_LOG_TEXT, LLMOPS_FEEDBACK_WINDOW_DAYS.

A shadow challenger (llmops.shadow; docs/serving.md): LLMOPS_LLM_SHADOW=<version or alias> of
LLMOPS_LLM_RELEASE (e.g. ``challenger``) loads that release beside the served model; it answers a
sample of the requests (LLMOPS_SHADOW_SAMPLE, default 0.1) again, on a worker thread once the
client's answer is sent, from the same messages and sampling settings, and its answer is logged
with ``role: "shadow"`` and the completion's id. The client only ever gets the served model's answer.
"""

import asyncio
import time
import weakref
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import bentoml
from pydantic import BaseModel, Field, SecretStr

from llmops.feedback import Feedback, FeedbackReceipt, document_feedback
from llmops.llm.backends import DEFAULT_MAX_BATCH
from llmops.llm.openai_api import ApiLimits, openai_app, shown_model
from llmops.llm.openai_schemas import OpenAPIRoutes
from llmops.llm.release import ServedModel
from llmops.registry import ModelVersion
from llmops.release_follower import ReleaseFollower, Reload, Served, document_reload, reload_route
from llmops.serving import protect, settings_from_env
from llmops.shadow import Shadow
from llmops.supervision import die_with_supervisor
from llmops.tracing import setup as setup_tracing

if TYPE_CHECKING:
    from llmops.llm.answered import AnsweredRequest
    from llmops.llm.types import Backend, SamplingParams

die_with_supervisor()  # a worker ends with the bentoml serve process that started it
setup_tracing()  # before BentoML builds its request span's middleware (llmops.tracing)


class Settings(BaseModel):
    """Service settings; each field is read from ``LLMOPS_<FIELD>`` (see the module docstring)."""

    llm_model: str | None = None
    llm_release: str = "llm"
    llm_version: str = "champion"
    llm_served_name: str | None = None
    llm_backend: Literal["auto", "transformers", "vllm"] = "auto"
    llm_max_tokens: int = Field(512, ge=1)
    llm_max_batch: int = Field(DEFAULT_MAX_BATCH, ge=1)
    torch_threads: int | None = Field(None, ge=1)
    llm_gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    llm_max_model_len: int | None = Field(None, ge=16)
    api_key: SecretStr | None = None
    inference_log_dir: str | None = None  # a folder or s3://bucket/prefix
    timeout_s: float = Field(300.0, gt=0)
    reload_poll_s: float = Field(0.0, ge=0)  # 0: reload only on POST /reload (a registry release)
    llm_shadow: str | None = None  # a version or alias of llm_release that also answers a sample


# A bento's arguments are defaults under the LLMOPS_* variables (llmops.serving.settings_from_env):
# services/llm.bentofile.yaml sets llm_backend: vllm, so that bento declares the GPU vLLM needs.
SETTINGS = settings_from_env(Settings)
SERVED_NAME = SETTINGS.llm_served_name or SETTINGS.llm_release


def _serving_backend() -> "Backend":
    """The backend this worker serves now; the /v1 routes call it once per request."""
    return bentoml.get_current_service().backend


def _shown_model() -> str:
    """What /v1/models and /info call the served model: its release, or the folder's name."""
    service = bentoml.get_current_service()
    return shown_model(service.release, service.backend.model_path)


# the release each loaded backend was loaded from: a request's row names the one that answered it
RELEASES: "weakref.WeakKeyDictionary[Backend, ModelVersion]" = weakref.WeakKeyDictionary()


def _log_answered(answered: "AnsweredRequest") -> None:
    """One ``llm_request`` row (llmops.request_log) for a request that reached the model."""
    from llmops.request_log import elapsed_ms, llm_request_row

    log = bentoml.get_current_service().request_log
    release = RELEASES.get(answered.backend)
    done = answered.done
    first = elapsed_ms(answered.started, answered.first_token) if answered.first_token else None
    log.request(llm_request_row(
        request_id=answered.request_id, model=log.model, model_version=release.version if release else None,
        route=answered.route, stream=answered.stream, prompt=answered.prompt, answer=answered.answer,
        prompt_tokens=done.prompt_tokens if done else answered.prompt_tokens,
        completion_tokens=done.completion_tokens if done else None, finish_reason=answered.finish_reason,
        latency_ms={"first_token": first, "total": elapsed_ms(answered.started)}, keep_text=log.keep_text,
        status=answered.status, error=answered.error,
    ))  # fmt: skip
    shadow = bentoml.get_current_service().shadow
    if answered.params is not None and shadow.wants():  # after the answer is sent: never waited for
        shadow.submit(ShadowRequest(answered.request_id, answered.route, answered.stream, answered.messages,
                                    answered.prompt, answered.params))  # fmt: skip


class ShadowRequest(NamedTuple):
    """A sampled request as the client sent it, for the shadow challenger to answer again."""

    request_id: str
    route: str
    stream: bool
    messages: list[dict[str, str]] | None  # chat: rendered by the challenger's own template
    prompt: str  # a text completion's prompt
    params: "SamplingParams"


def _traced(backend: "Backend") -> dict[str, Any]:
    """What a request's spans say of the release that answers it (llmops.tracing)."""
    release = RELEASES.get(backend)
    if release is None:  # a folder model: its name is all there is
        return {"response_model": shown_model(None, backend.model_path)}
    return {"release": release.name, "alias": SETTINGS.llm_version, "release_version": release.version,
            "response_model": release.tag}  # fmt: skip


# built once: each request reads the backend the service serves at that moment
API = openai_app(
    _serving_backend,
    SERVED_NAME,
    ApiLimits(max_tokens=SETTINGS.llm_max_tokens),
    root=_shown_model,
    on_answered=_log_answered,
    traced=_traced,
)


def _load(served: ServedModel) -> "Backend":
    from llmops.llm.backends import make_backend

    options: dict[str, Any] = {"gpu_memory_utilization": SETTINGS.llm_gpu_memory_utilization}
    if SETTINGS.llm_max_model_len:
        options["max_model_len"] = SETTINGS.llm_max_model_len
    return make_backend(served.model, SETTINGS.llm_backend, adapter=served.adapter, revision=served.revision,
                        max_batch=SETTINGS.llm_max_batch, **options)  # fmt: skip


def _load_release(version: ModelVersion) -> "Backend":
    from llmops.llm.release import served_model

    backend = _load(served_model(version))
    RELEASES[backend] = version
    return backend


def _retire(backend: "Backend") -> None:
    close = getattr(backend, "close", None)
    if close is not None:
        close()


RESOURCES = {"gpu": 1, "memory": "16Gi"} if SETTINGS.llm_backend == "vllm" else {"cpu": "2", "memory": "4Gi"}


@bentoml.service(traffic={"timeout": SETTINGS.timeout_s}, resources=RESOURCES, workers=1)
@bentoml.asgi_app(API, path="/v1")
class LLM:
    """Chat and text completions from the served model, OpenAI style."""

    def __init__(self) -> None:
        from llmops.feedback import RequestLog
        from llmops.inference_log import InferenceLogger
        from llmops.threads import configure_torch_threads

        self.threads = configure_torch_threads(SETTINGS.torch_threads, RESOURCES.get("cpu"))
        self.served_name = SERVED_NAME
        self.follower: ReleaseFollower[Backend] | None = None
        self._folder: Backend | None = None
        if SETTINGS.llm_model:  # a folder or hub id: nothing in the registry to follow
            self._folder = _load(ServedModel(SETTINGS.llm_model, None, None))
        else:
            self.follower = ReleaseFollower(SETTINGS.llm_release, SETTINGS.llm_version, _load_release,
                                            poll_s=SETTINGS.reload_poll_s, retire=_retire)  # fmt: skip
            self.follower.start()
        # the release's log (a folder model's: its served name); answered ids are read back from it
        logged_as = SERVED_NAME if SETTINGS.llm_model else SETTINGS.llm_release
        self.request_log = RequestLog(InferenceLogger(SETTINGS.inference_log_dir, logged_as), logged_as)
        self.shadow = Shadow(SETTINGS.llm_release, SETTINGS.llm_shadow, _load_release, self._shadow_answer,
                             self._shadow_failed, poll_s=SETTINGS.reload_poll_s, retire=_retire)  # fmt: skip
        self.shadow.start()  # no challenger (an unset or unresolvable ref): no shadow, said once

    def __is_ready__(self) -> bool:
        return self.request_log.logger.alive

    @property
    def backend(self) -> "Backend":
        """The backend serving now: a request reads it once and uses only that."""
        return self.follower.served.release if self.follower else self._folder

    @property
    def release(self) -> str | None:
        """The registry tag served now (None: a folder)."""
        return self.follower.served.version.tag if self.follower else None

    @bentoml.api(route="/info")
    def info(self) -> dict:
        """Which model and backend answer, and the limits."""
        backend = self.backend
        return {
            "model": self.served_name,
            "path": shown_model(self.release, backend.model_path),  # never a path on the server
            "adapter": backend.adapter_path is not None,
            "release": self.release,
            "backend": backend.name,
            "max_context": backend.max_context,
            "max_tokens": SETTINGS.llm_max_tokens,
            "max_batch": getattr(backend, "max_batch", None),
            "active_requests": getattr(getattr(backend, "engine", None), "active", None),
            "torch_threads": self.threads,
            "reload_poll_s": SETTINGS.reload_poll_s if self.follower else None,
            "shadow": self.shadow.info(),  # the challenger answering a sample (null: none)
        }

    @bentoml.api(route="/reload")
    async def reload(self, ctx: bentoml.Context) -> Reload:
        """Serve the release the alias points at now, if it moved (409 for a folder model)."""
        if self.follower is None:
            ctx.response.status_code = HTTPStatus.CONFLICT
            error = "LLMOPS_LLM_MODEL names a model folder, not a registry release: nothing to follow"
            shown = Path(self.backend.model_path).name  # never a path on the server
            await asyncio.to_thread(self.shadow.reload)  # a registry challenger follows its ref all the same
            return Reload(model=self.served_name, previous=shown, current=shown, reloaded=False, error=error)
        return await reload_route(self.follower, ctx, also=self.shadow.reload)

    @bentoml.api(route="/feedback", input_spec=Feedback)
    def feedback(self, request_id: str, rating: int, correction: str | None = None,
                 comment: str | None = None) -> FeedbackReceipt:  # fmt: skip
        """Rate an answer by its completion id (``chatcmpl-…``/``cmpl-…``): 1 or -1, optionally with
        the answer it should have been and a comment. 404 for an id this service did not answer in
        the last LLMOPS_FEEDBACK_WINDOW_DAYS days; a second rating replaces the first."""
        body = Feedback(request_id=request_id, rating=rating, correction=correction, comment=comment)
        return self.request_log.feedback(body)

    def _shadow_answer(self, served: Served["Backend"], request: ShadowRequest) -> None:
        """The challenger answers a sampled request on a shadow worker thread (the client has the
        served model's answer) and logs its row (``role: "shadow"``, the same completion id)."""
        from llmops.llm.openai_api import ApiError
        from llmops.llm.types import Completion
        from llmops.request_log import SHADOW_ROLE, elapsed_ms, llm_request_row

        backend, started, first, done = served.release, time.perf_counter(), None, None
        prompt = backend.render(request.messages) if request.messages is not None else request.prompt
        used = backend.count_tokens(prompt)
        if used + request.params.max_tokens > backend.max_context:  # as the API would refuse it
            raise ApiError(400, f"the challenger's context is {backend.max_context} tokens; the prompt has "
                           f"{used} and max_tokens asks for {request.params.max_tokens}", None,
                           "context_length_exceeded")  # fmt: skip
        for item in backend.stream(prompt, request.params):
            if isinstance(item, Completion):
                done = item
            elif first is None:
                first = time.perf_counter()
        if done is None:
            raise RuntimeError("the challenger's stream ended without a completion")
        self.request_log.shadow(llm_request_row(
            request_id=request.request_id, model=served.version.name, model_version=served.version.version,
            route=request.route, stream=request.stream, prompt=prompt, answer=done.text,
            prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
            finish_reason=done.finish_reason, keep_text=self.request_log.keep_text, role=SHADOW_ROLE,
            latency_ms={"first_token": elapsed_ms(started, first) if first else None,
                        "total": elapsed_ms(started)},
        ))  # fmt: skip

    def _shadow_failed(self, served: Served["Backend"], request: ShadowRequest, error: Exception,
                       latency_ms: float) -> None:  # fmt: skip
        """The shadow row of a request the challenger failed on: 400 for a prompt over its context,
        else 500."""
        from llmops.llm.openai_api import ApiError
        from llmops.request_log import SHADOW_ROLE, llm_request_row, one_line

        status = error.status if isinstance(error, ApiError) else 500
        self.request_log.shadow(llm_request_row(
            request_id=request.request_id, model=served.version.name, model_version=served.version.version,
            route=request.route, stream=request.stream, prompt=request.prompt, answer=None,
            prompt_tokens=None, completion_tokens=None, finish_reason=None,
            latency_ms={"first_token": None, "total": latency_ms},
            keep_text=self.request_log.keep_text, status=status, error=one_line(error), role=SHADOW_ROLE,
        ))  # fmt: skip

    @bentoml.on_shutdown
    def shut_down(self) -> None:
        self.shadow.close()  # first: a challenger's answer in progress still reaches the log
        if self.follower is not None:
            self.follower.close()
        self.request_log.logger.close()


protect(
    LLM, SETTINGS.api_key, openapi=lambda doc: document_feedback(document_reload(doc)), openai_prefix="/v1"
)
# the /v1 routes in /docs.json; the served name is the registry name unless LLMOPS_LLM_SERVED_NAME
LLM.add_asgi_middleware(
    OpenAPIRoutes, prefix="/v1", model_name=SERVED_NAME, max_tokens=SETTINGS.llm_max_tokens
)
