"""The OpenAI generator against a real endpoint on 127.0.0.1 that is slow, refuses or fails: its
timeout and retries are settings, and every failure is an error naming the endpoint and why."""

import socket
import time

import pytest

from llmops.rag.generators import GenerationRequest, GeneratorFailed, GeneratorTimeout, make_generator
from tests.llm_endpoint import Behaviour, chat_endpoint

SLOW_S = 4.0
REQUEST = GenerationRequest(messages=[{"role": "user", "content": "hi"}], question="hi", contexts=[])


@pytest.fixture
def endpoint():
    """(base URL, behaviour): an endpoint that answers "late" after SLOW_S seconds until told otherwise."""
    behaviour = Behaviour(delay_s=SLOW_S)
    with chat_endpoint(behaviour) as url:
        yield url, behaviour


def test_the_generator_gives_up_after_the_configured_timeout_and_retries(endpoint, monkeypatch):
    url, behaviour = endpoint
    monkeypatch.setenv("LLMOPS_GENERATOR_TIMEOUT_S", "0.5")
    monkeypatch.setenv("LLMOPS_GENERATOR_RETRIES", "1")
    generator = make_generator(f"openai:{url}#m")
    with pytest.raises(
        GeneratorTimeout, match=r"within 0.5 s \(2 attempt\(s\)\).*LLMOPS_GENERATOR_TIMEOUT_S"
    ):
        generator.generate(REQUEST)
    given_up = time.monotonic()
    calls = behaviour.calls
    assert len(calls) == 2  # the first attempt and one retry
    # each attempt is dropped after 0.5 s, long before the endpoint's 4 s answer (the wait is
    # counted from the first request: the client's first-call set-up is not the endpoint's time)
    assert calls[1] - calls[0] < SLOW_S - 1 and given_up - calls[1] < SLOW_S - 1
    assert given_up - calls[0] >= 1.0


def test_a_timeout_longer_than_the_answer_gets_the_answer(endpoint, monkeypatch):
    url, behaviour = endpoint
    monkeypatch.setenv("LLMOPS_GENERATOR_TIMEOUT_S", str(SLOW_S + 3))
    monkeypatch.setenv("LLMOPS_GENERATOR_RETRIES", "0")
    assert make_generator(f"openai:{url}#m").generate(REQUEST) == "late"
    assert len(behaviour.calls) == 1


def test_a_refusal_is_an_error_with_the_endpoints_message_and_is_not_retried(endpoint, monkeypatch):
    url, behaviour = endpoint
    monkeypatch.setenv("LLMOPS_GENERATOR_RETRIES", "2")
    behaviour.delay_s, behaviour.status = 0, 400
    behaviour.message = "this model's context is 512 tokens; the messages have 900"
    with pytest.raises(GeneratorFailed, match=rf"{url} answered 400: this model's context is 512 tokens"):
        make_generator(f"openai:{url}#m").generate(REQUEST)
    assert len(behaviour.calls) == 1  # the same request would be refused again


def test_a_server_error_is_retried_then_an_error_with_a_bounded_message(endpoint, monkeypatch):
    url, behaviour = endpoint
    monkeypatch.setenv("LLMOPS_GENERATOR_RETRIES", "1")
    behaviour.delay_s, behaviour.status, behaviour.message = 0, 500, "x" * 5000
    with pytest.raises(GeneratorFailed, match=r"answered 500: x+\.\.\.$") as failed:
        make_generator(f"openai:{url}#m").generate(REQUEST)
    assert len(behaviour.calls) == 2 and len(str(failed.value)) < 400


def test_an_endpoint_nobody_listens_on_is_an_error_naming_it(monkeypatch):
    monkeypatch.setenv("LLMOPS_GENERATOR_RETRIES", "0")
    with socket.socket() as free:  # a port that was free a moment ago: nothing listens on it
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(GeneratorFailed, match=rf"cannot reach {url} \(1 attempt\(s\)\)"):
        make_generator(f"openai:{url}#m").generate(REQUEST)


def test_bad_timeout_settings_name_the_variable(monkeypatch):
    monkeypatch.setenv("LLMOPS_GENERATOR_TIMEOUT_S", "-1")
    with pytest.raises(ValueError, match="LLMOPS_GENERATOR_TIMEOUT_S"):
        make_generator("openai:http://127.0.0.1:9/v1#m")
