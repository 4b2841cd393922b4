"""The RAG service and the LLM service in one deployment, composed with ``bentoml.depends``:

    LLMOPS_RAG_RELEASE=rag LLMOPS_LLM_RELEASE=llm \
        bentoml serve services.rag_llm:RagWithLLM --host 127.0.0.1 --port 3000

``bentoml serve`` starts the LLM service (services/llm.py) as its own process beside the RAG one
and connects them over a local socket; in a BentoCloud or container deployment each runs and
scales as its own service. No URL is wired by hand. The RAG answers come from the composed LLM
through its OpenAI API (``LLMOPS_GENERATOR_TIMEOUT_S`` / ``LLMOPS_GENERATOR_RETRIES`` apply, and
``LLMOPS_API_KEY``, shared by both services, is sent to it); the release's own generator is not
loaded. Every other setting is services/rag.py's and services/llm.py's. Each service follows its
own release (``/reload`` or LLMOPS_RELOAD_POLL_S): a new RAG release is answered by the same
composed LLM, and the LLM service swaps its model without the RAG service noticing.

An LLM server elsewhere stays a URL: ``LLMOPS_GENERATOR=openai:http://host:port/v1#model
bentoml serve services.rag:Rag --host 127.0.0.1``. On a laptop without an LLM server, the in-process form is
``LLMOPS_GENERATOR=transformers:/model/folder``.
"""

import time
from urllib.parse import unquote, urlparse

import bentoml
import httpx

from llmops.serving import protect
from llmops.supervision import die_with_supervisor
from services.llm import LLM
from services.llm import SETTINGS as LLM_SETTINGS
from services.rag import RESOURCES, SETTINGS, LiveRag, Rag, rag_openapi

die_with_supervisor()  # a worker ends with the bentoml serve process that started it

LLM_READY_S = 600  # the LLM process starts beside this one and may still be loading its model


def _connect(url: str) -> tuple[str, httpx.Client]:
    """(base URL, HTTP client) for the address BentoML gives a composed service: a Unix socket
    (``file://``), ``tcp://host:port``, or an http(s) URL."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        transport = httpx.HTTPTransport(uds=unquote(parsed.path))
        return "http://127.0.0.1:3000", httpx.Client(transport=transport)  # the host is not used
    base = f"http://{parsed.netloc}" if parsed.scheme == "tcp" else url.rstrip("/")
    return base, httpx.Client()


def _wait_until_ready(base: str, client: httpx.Client, within_s: float) -> None:
    """Until the composed LLM service answers its readiness probe (both processes start at once)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            if client.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:  # its socket is not there yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the composed LLM service was not ready after {within_s} s")
        time.sleep(0.5)


@bentoml.service(traffic={"timeout": SETTINGS.timeout_s}, resources=RESOURCES, workers=1)
class RagWithLLM(Rag.inner):
    """Retrieval-augmented answers written by the LLM service composed into this deployment."""

    llm = bentoml.depends(LLM)

    def __init__(self) -> None:
        from llmops.rag.generators import OpenAIGenerator, TransformersGenerator

        llm = self.llm  # connected before the first release opens: every release answers through it
        if isinstance(llm, LLM.inner):  # no separate process (the LLM runs in this one): no HTTP hop
            generator = TransformersGenerator(
                llm.backend.model_path, backend=lambda: llm.backend
            )  # follows reloads
            label = f"composed:{llm.served_name}"
        else:  # a proxy of the LLM process: speak OpenAI to the address BentoML gave it
            base, client = _connect(type(self).__dict__["llm"].url)
            _wait_until_ready(base, client, LLM_READY_S)
            key = LLM_SETTINGS.api_key.get_secret_value() if LLM_SETTINGS.api_key else None
            generator = OpenAIGenerator(f"{base}/v1", http_client=client, api_key=key)
            label = f"composed:{generator.model}"
        self.composed = (generator, label)
        super().__init__()

    def _generator_spec(self, release) -> str:
        return "extractive"  # a stand-in (no model to load): _open puts the composed LLM in its place

    def _open(self, version) -> LiveRag:
        live = super()._open(version)
        live.pipeline.generator, live.pipeline.versions["generator"] = self.composed
        return live

    def _retire(self, live: LiveRag) -> None:
        pass  # the composed LLM outlives every RAG release


protect(RagWithLLM, SETTINGS.api_key, max_body_bytes=SETTINGS.max_body_bytes, openapi=rag_openapi)
