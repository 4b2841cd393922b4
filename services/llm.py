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

Environment: LLMOPS_LLM_BACKEND (auto | transformers | vllm; auto picks vLLM on CUDA when
installed), LLMOPS_LLM_MAX_TOKENS (largest max_tokens a request may ask, 512),
LLMOPS_LLM_MAX_BATCH (transformers: requests sharing one decode step, 32; more wait for a slot),
LLMOPS_TORCH_THREADS (torch's CPU threads; default: the service's declared cpu, 2),
LLMOPS_LLM_GPU_MEMORY_UTILIZATION (vLLM, 0.9), LLMOPS_LLM_MAX_MODEL_LEN (vLLM; default the
model's), LLMOPS_API_KEY (bearer key for everything but the probes), LLMOPS_TIMEOUT_S.
"""

from typing import Literal

import bentoml
from pydantic import BaseModel, Field, SecretStr
from starlette.applications import Starlette

from llmops.llm.backends import DEFAULT_MAX_BATCH
from llmops.llm.openai_schemas import OpenAPIRoutes
from llmops.llm.release import ServedModel
from llmops.serving import protect, settings_from_env


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
    timeout_s: float = Field(300.0, gt=0)


# A bento's arguments are defaults under the LLMOPS_* variables (llmops.serving.settings_from_env):
# services/llm.bentofile.yaml sets llm_backend: vllm, so that bento declares the GPU vLLM needs.
SETTINGS = settings_from_env(Settings)
API = Starlette()  # routes are added when the model is loaded (each worker loads its own)


def _model_source(settings: Settings) -> tuple[ServedModel, str, str | None]:
    """(what to load, the served name, the registry tag or None) from the settings or the registry."""
    from llmops.llm.release import served_model

    if settings.llm_model:
        return (
            ServedModel(settings.llm_model, None, None),
            settings.llm_served_name or settings.llm_release,
            None,
        )
    from llmops.registry import Registry

    version = Registry().get(settings.llm_release, settings.llm_version)
    return served_model(version), settings.llm_served_name or version.name, version.tag


RESOURCES = {"gpu": 1, "memory": "16Gi"} if SETTINGS.llm_backend == "vllm" else {"cpu": "2", "memory": "4Gi"}


@bentoml.service(traffic={"timeout": SETTINGS.timeout_s}, resources=RESOURCES, workers=1)
@bentoml.asgi_app(API, path="/v1")
class LLM:
    """Chat and text completions from the served model, OpenAI style."""

    def __init__(self) -> None:
        from llmops.llm.backends import make_backend
        from llmops.llm.openai_api import ApiLimits, openai_app
        from llmops.threads import configure_torch_threads

        self.threads = configure_torch_threads(SETTINGS.torch_threads, RESOURCES.get("cpu"))
        served, name, self.release = _model_source(SETTINGS)
        options = {"gpu_memory_utilization": SETTINGS.llm_gpu_memory_utilization}
        if SETTINGS.llm_max_model_len:
            options["max_model_len"] = SETTINGS.llm_max_model_len
        self.backend = make_backend(served.model, SETTINGS.llm_backend, adapter=served.adapter,
                                    revision=served.revision, max_batch=SETTINGS.llm_max_batch,
                                    **options)  # fmt: skip
        self.served_name = name
        app = openai_app(self.backend, name, ApiLimits(max_tokens=SETTINGS.llm_max_tokens))
        API.router.routes.extend(app.routes)

    @bentoml.api(route="/info")
    def info(self) -> dict:
        """Which model and backend answer, and the limits."""
        return {
            "model": self.served_name,
            "path": self.backend.model_path,
            "adapter": self.backend.adapter_path,
            "release": self.release,
            "backend": self.backend.name,
            "max_context": self.backend.max_context,
            "max_tokens": SETTINGS.llm_max_tokens,
            "max_batch": getattr(self.backend, "max_batch", None),
            "active_requests": getattr(getattr(self.backend, "engine", None), "active", None),
            "torch_threads": self.threads,
        }


protect(LLM, SETTINGS.api_key)
# the /v1 routes in /docs.json; the served name is the registry name unless LLMOPS_LLM_SERVED_NAME
LLM.add_asgi_middleware(
    OpenAPIRoutes, prefix="/v1", model_name=SETTINGS.llm_served_name or SETTINGS.llm_release
)
