"""OpenTelemetry traces of the services' requests, named with the release versions that served them.

BentoML starts one span per HTTP request (its ASGI middleware); the work inside it gets child
spans from :func:`span`: ``retrieve``, ``fuse``, ``render_prompt``, ``generate`` (with the time
to the first token), ``log`` and ``shadow``. Attributes follow OpenTelemetry's ``gen_ai.*``
semantic conventions where they apply and ``llmops.*`` otherwise; :data:`ATTRIBUTES` maps each
keyword a span takes to its attribute name, so every name is written here once. A question's
text is an attribute only when ``LLMOPS_LOG_TEXT`` keeps text in the log (:func:`text_attributes`);
its SHA-256 and length always are.

Where spans go is decided once per process, at the first span or when BentoML builds its request
middleware (each service calls :func:`setup` at import, which reads the OTEL_* variables):

* BentoML's own ``tracing:`` configuration (``exporter_type`` set): its tracer provider, so the
  request span and these share one exporter and one sampler (``tracing.sample_rate``).
* else the standard variables: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console`` or both,
  comma-separated; ``none``: off), on by itself (``otlp``) when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set. The OTLP exporter speaks HTTP/protobuf
  (``opentelemetry-exporter-otlp-proto-http``) and reads its own ``OTEL_EXPORTER_OTLP_*``
  variables; the SDK reads ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
  ``OTEL_TRACES_SAMPLER`` and ``OTEL_BSP_*``. BentoML's request span is given the same provider.
* else nothing: :func:`span` yields a non-recording span and sets nothing, so an untraced
  service pays one function call per span.

docs/monitoring.md (Tracing) shows Phoenix, Langfuse, Jaeger and a Collector as receivers.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context, get_current
from opentelemetry.propagate import inject

from llmops.errors import LlmopsError
from llmops.request_log import sha256_hex
from llmops.settings import SettingsError, first_value, value

TRACER_NAME = "llmops"

# keyword of span()/annotate() -> attribute name: the one list of what a span may carry
ATTRIBUTES = {
    # the release that served the request (llmops.registry; the services' LLMOPS_*_RELEASE/_VERSION)
    "release": "llmops.release.name",
    "alias": "llmops.release.alias",
    "release_version": "llmops.release.version",
    "request_id": "llmops.request_id",
    "route": "llmops.route",
    # a RAG release's parts
    "index_version": "llmops.index.version",
    "embedding_model": "llmops.embedding.model",
    "prompt": "llmops.prompt.version",
    "generator": "llmops.generator",
    "retrieval_mode": "llmops.retrieval.mode",
    "k": "llmops.retrieval.k",
    "candidates": "llmops.retrieval.candidates",
    "hits": "llmops.retrieval.hits",
    "contexts": "llmops.prompt.contexts",
    "top_score": "llmops.retrieval.top_score",
    # what the user sent, as text_attributes() allows
    "question": "llmops.question",
    "question_sha256": "llmops.question.sha256",
    "question_chars": "llmops.question.chars",
    "prompt_chars": "llmops.prompt.chars",
    # the classifier
    "records": "llmops.classifier.records",
    # OpenTelemetry's generative-AI conventions
    "operation": "gen_ai.operation.name",
    "provider": "gen_ai.provider.name",
    "request_model": "gen_ai.request.model",
    "response_model": "gen_ai.response.model",
    "response_id": "gen_ai.response.id",
    "max_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "seed": "gen_ai.request.seed",
    "input_tokens": "gen_ai.usage.input_tokens",
    "output_tokens": "gen_ai.usage.output_tokens",
    "finish_reasons": "gen_ai.response.finish_reasons",
    "time_to_first_token": "gen_ai.server.time_to_first_token",  # seconds, as the metric of that name
    "stream": "llmops.stream",
    "status": "http.response.status_code",
    "error": "error.type",
}
FIRST_TOKEN = "gen_ai.first_token"  # the event a generate span records at its first piece of text
EXPORTERS = frozenset({"otlp", "console"})
OTLP_PROTOCOL = "http/protobuf"


class TracingError(LlmopsError, ValueError):
    """A span given an attribute that :data:`ATTRIBUTES` does not name."""


class _Tracing:
    """This process's decision: the OTEL_* exporters (:func:`setup`), then, at the first span or
    when BentoML builds its middleware, where spans go and the provider (:func:`provider`)."""

    exporters: list[Any] = []  # from the OTEL_* variables, read by setup()
    decided = False
    source: str | None = None  # "bentoml": its configuration; "env": the OTEL_* variables; None: off
    provider: Any = None
    tracer: trace.Tracer | None = None


_DECIDING = threading.Lock()


class _DeferredProvider(trace.TracerProvider):
    """What BentoML's request span comes from: the provider :func:`provider` decides on first use,
    once BentoML has read its configuration and its server knows its service's name."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return provider().get_tracer(*args, **kwargs)


def setup() -> bool:
    """Read the OTEL_* variables when a service is imported: a bad ``OTEL_TRACES_EXPORTER`` or
    protocol fails the start, and BentoML's request span is given the provider these spans come
    from. True when they name an exporter (BentoML's own ``tracing:`` configuration, read later,
    still takes precedence)."""
    if not _Tracing.exporters:
        _Tracing.exporters = _exporters()
        container = _bentoml_container()
        if _Tracing.exporters and container is not None:
            container.tracer_provider.set(_DeferredProvider())
    return bool(_Tracing.exporters)


def provider() -> Any:
    """The tracer provider spans come from (None: not traced), decided and built on first use."""
    with _DECIDING:  # the first requests may ask at once, from several threads
        if not _Tracing.decided:
            container = _bentoml_container()
            if container is not None and container.config.tracing.exporter_type.get():
                container.tracer_provider.reset()  # BentoML's configuration decides, for its span too
                _Tracing.source, _Tracing.provider = "bentoml", container.tracer_provider.get()
            elif _Tracing.exporters:
                _Tracing.source, _Tracing.provider = "env", _built_provider()
            _Tracing.decided = True
    return _Tracing.provider


def _built_provider() -> Any:
    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # the BentoML service's name, unless OTEL_SERVICE_NAME names it (the detector reads it)
    resource = Resource.create({SERVICE_NAME: _service_name()}).merge(OTELResourceDetector().detect())
    built = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER, parent-based
    for exporter in _Tracing.exporters:
        built.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_* read by the SDK
    return built


def shutdown() -> None:
    """Send the spans still queued and forget the decision (a service's shutdown; tests)."""
    if _Tracing.source == "env":
        _Tracing.provider.shutdown()
    container = _bentoml_container()
    if _Tracing.exporters and container is not None:
        container.tracer_provider.reset()
    _Tracing.exporters, _Tracing.decided, _Tracing.source = [], False, None
    _Tracing.provider, _Tracing.tracer = None, None


def _exporters() -> list[Any]:
    names = value("OTEL_TRACES_EXPORTER")
    endpoint = first_value("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    chosen = [n.strip().lower() for n in (names or ("otlp" if endpoint else "")).split(",") if n.strip()]
    if chosen == ["none"]:
        return []
    unknown = sorted(set(chosen) - EXPORTERS)
    if unknown:
        raise SettingsError(f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} is not one of otlp, console, none")
    protocol = (
        first_value("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") or OTLP_PROTOCOL
    )
    exporters: list[Any] = []
    if "otlp" in chosen:
        if protocol != OTLP_PROTOCOL:
            raise SettingsError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not served; traces are sent as "
                f"{OTLP_PROTOCOL} (the receiver's HTTP port, 4318 by default)"
            )
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise SettingsError(
                "OTEL_TRACES_EXPORTER: otlp needs opentelemetry-exporter-otlp-proto-http "
                "(pip install metaflow-llmops installs it)"
            ) from None
        exporters.append(OTLPSpanExporter())  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*
    if "console" in chosen:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporters.append(ConsoleSpanExporter())
    return exporters


def _bentoml_container() -> Any:
    """BentoML's configuration container when this process runs a service (bentoml imported)."""
    if sys.modules.get("bentoml") is None:
        return None
    from bentoml._internal.configuration.containers import BentoMLContainer

    return BentoMLContainer


def _service_name() -> str:
    container = _bentoml_container()
    if container is not None:
        from bentoml._internal.context import server_context

        return server_context.service_name or TRACER_NAME
    return TRACER_NAME


def tracer() -> trace.Tracer | None:
    """The tracer spans come from; None when this process is not traced."""
    if _Tracing.tracer is None and (not _Tracing.decided or _Tracing.provider is not None):
        built = provider()  # decided here, or already when BentoML built its middleware
        _Tracing.tracer = built.get_tracer(TRACER_NAME) if built is not None else None
    return _Tracing.tracer


def attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` by their attribute names, without the unset (None) ones."""
    named = {}
    for key, item in values.items():
        if key not in ATTRIBUTES:
            raise TracingError(f"span attribute {key!r}: not one of {sorted(ATTRIBUTES)}")
        if item is not None:
            named[ATTRIBUTES[key]] = list(item) if isinstance(item, tuple | list) else item
    return named


_UNTRACED = nullcontext(trace.INVALID_SPAN)  # what span() gives when nothing is traced: reused


def span(
    name: str, parent: Context | None = None, links: Sequence[Context | None] = (), **values: Any
) -> AbstractContextManager[trace.Span]:
    """A child span of the current one (or of ``parent``, a :func:`handed_context` taken on
    another thread), current while the block runs; ``links``: the contexts of other requests the
    work serves too (a batch of several). An exception leaving the block is recorded on it. Not
    traced: a non-recording span, and nothing is set."""
    active = tracer()
    if active is None:
        return _UNTRACED
    linked = [trace.Link(trace.get_current_span(c).get_span_context()) for c in links if c is not None]
    return active.start_as_current_span(name, context=parent, links=linked, attributes=attributes(values))


def handed_context() -> Context | None:
    """The current trace context, for work this request hands to another thread (a shadow
    challenger's answer): its :func:`span` with ``parent=`` joins the request's trace."""
    return get_current() if tracer() is not None else None


def start(name: str, **values: Any) -> trace.Span:
    """A child span of the current one that the caller ends (``span.end()``): one that outlives
    the block that starts it, such as a streamed answer's ``generate``."""
    active = tracer()
    if active is None:
        return trace.INVALID_SPAN
    return active.start_span(name, attributes=attributes(values))


def finish(target: trace.Span, error: str | None = None, **values: Any) -> None:
    """End a span from :func:`start` with ``values`` set on it, marked failed when ``error``."""
    if not target.is_recording():
        return
    target.set_attributes(attributes(values))
    if error is not None:
        target.set_status(trace.Status(trace.StatusCode.ERROR, error))
    target.end()


def annotate(target: trace.Span | None = None, **values: Any) -> None:
    """Set attributes on ``target``, default the current span (BentoML's request span in an API
    method, or the innermost :func:`span`)."""
    if tracer() is None:
        return
    (target or trace.get_current_span()).set_attributes(attributes(values))


def text_attributes(question: str, keep_text: bool) -> dict[str, Any]:
    """A question's SHA-256 and length, and its text only when ``keep_text``
    (``LLMOPS_LOG_TEXT``, :func:`llmops.request_log.request_log_settings`)."""
    return {"question": question if keep_text else None, "question_sha256": sha256_hex(question),
            "question_chars": len(question)}  # fmt: skip


def trace_headers() -> dict[str, str]:
    """The W3C ``traceparent`` of the current span, for a request to another traced service (the
    RAG service's call to the LLM service): its spans join this trace. Empty when not traced."""
    headers: dict[str, str] = {}
    if tracer() is not None:
        inject(headers)
    return headers
