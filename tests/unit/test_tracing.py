"""llmops.tracing: spans reach a real OTLP/HTTP receiver with their parents and attribute names,
a question's text only when the log keeps text, and nothing is recorded when nothing is set."""

import threading

import pytest

from llmops import tracing
from llmops.settings import SettingsError
from tests.otlp_receiver import otlp_receiver

OTEL = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME")  # fmt: skip


@pytest.fixture
def untraced(monkeypatch):
    for name in OTEL:
        monkeypatch.delenv(name, raising=False)
    tracing.shutdown()
    yield monkeypatch
    tracing.shutdown()


def test_nothing_configured_records_nothing(untraced):
    assert tracing.setup() is False and tracing.tracer() is None
    with tracing.span("retrieve", k=4) as span:
        assert not span.is_recording()
        tracing.annotate(request_id="r")  # no error, nothing to set
    assert tracing.trace_headers() == {} and not tracing.start("generate").is_recording()
    untraced.setenv("OTEL_TRACES_EXPORTER", "none")
    untraced.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    assert tracing.setup() is False


def test_spans_reach_an_otlp_receiver_with_parents_and_named_attributes(untraced):
    with otlp_receiver() as receiver:
        untraced.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        untraced.setenv("OTEL_SERVICE_NAME", "tracing-test")
        untraced.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        assert tracing.setup() is True
        with tracing.span("request", request_id="r1", **tracing.text_attributes("what is drift?", False)):
            with tracing.span("generate", operation="chat", input_tokens=12, finish_reasons=("stop",)):
                headers = tracing.trace_headers()
            streamed = tracing.start("generate", stream=True)
            streamed.add_event(tracing.FIRST_TOKEN)
            tracing.finish(streamed, "client disconnected", output_tokens=3, time_to_first_token=0.01)
            handed = tracing.handed_context()

        def shadow() -> None:
            with tracing.span("shadow", parent=handed):
                pass

        elsewhere = threading.Thread(target=shadow)
        elsewhere.start()
        elsewhere.join()
        spans = receiver.wait_for(lambda spans: len(spans) == 4)
    by_name = {(s.name, s.attributes.get("llmops.stream")): s for s in spans}
    outer, inner, stream = by_name["request", None], by_name["generate", None], by_name["generate", True]
    assert outer.parent_id == "" and inner.parent_id == stream.parent_id == outer.span_id
    assert inner.trace_id == outer.trace_id and headers["traceparent"].split("-")[1] == outer.trace_id
    assert outer.service == "tracing-test" and outer.attributes["llmops.request_id"] == "r1"
    assert "llmops.question" not in outer.attributes and outer.attributes["llmops.question.chars"] == 14
    assert len(outer.attributes["llmops.question.sha256"]) == 64
    assert inner.attributes == {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 12,
                                "gen_ai.response.finish_reasons": ["stop"]}  # fmt: skip
    assert stream.events == [tracing.FIRST_TOKEN] and stream.status == 2
    assert stream.attributes["gen_ai.server.time_to_first_token"] == 0.01
    assert by_name["shadow", None].parent_id == outer.span_id  # a span on another thread joins the trace


def test_the_question_is_an_attribute_only_when_the_log_keeps_text():
    kept = tracing.attributes(tracing.text_attributes("my question", keep_text=True))
    hidden = tracing.attributes(tracing.text_attributes("my question", keep_text=False))
    assert kept["llmops.question"] == "my question" and "my question" not in hidden.values()
    assert kept["llmops.question.sha256"] == hidden["llmops.question.sha256"]


def test_an_unknown_attribute_or_exporter_is_refused_by_name(untraced):
    with pytest.raises(tracing.TracingError, match="'colour'"):
        tracing.attributes({"colour": "red"})
    untraced.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(SettingsError, match="OTEL_TRACES_EXPORTER: zipkin"):
        tracing.setup()
    untraced.setenv("OTEL_TRACES_EXPORTER", "otlp")
    untraced.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(SettingsError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        tracing.setup()
