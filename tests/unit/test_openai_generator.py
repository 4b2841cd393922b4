"""The OpenAI generator's timeout and retries are settings, honoured against a real slow endpoint
on 127.0.0.1 (an HTTP server that takes longer to answer than the generator may wait)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llmops.llm.generators import GenerationRequest, GeneratorTimeout, make_generator

SLOW_S = 4.0


@pytest.fixture
def slow_endpoint():
    """An OpenAI-style chat endpoint that answers after SLOW_S seconds; counts the requests."""
    calls = []

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self):
            calls.append(time.monotonic())
            self.rfile.read(int(self.headers.get("content-length", 0)))
            time.sleep(SLOW_S)
            answer = {"role": "assistant", "content": "late"}
            choice = {"index": 0, "finish_reason": "stop", "message": answer}
            body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                               "choices": [choice]})  # fmt: skip
            try:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())
            except OSError:  # the client gave up first
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", calls
    server.shutdown()
    server.server_close()


REQUEST = GenerationRequest(messages=[{"role": "user", "content": "hi"}], question="hi", contexts=[])


def test_the_generator_gives_up_after_the_configured_timeout_and_retries(slow_endpoint, monkeypatch):
    url, calls = slow_endpoint
    monkeypatch.setenv("LLMOPS_GENERATOR_TIMEOUT_S", "0.5")
    monkeypatch.setenv("LLMOPS_GENERATOR_RETRIES", "1")
    generator = make_generator(f"openai:{url}#m")
    with pytest.raises(
        GeneratorTimeout, match=r"within 0.5 s \(2 attempt\(s\)\).*LLMOPS_GENERATOR_TIMEOUT_S"
    ):
        generator.generate(REQUEST)
    given_up = time.monotonic()
    assert len(calls) == 2  # the first attempt and one retry
    # each attempt is dropped after 0.5 s, long before the endpoint's 4 s answer (the wait is
    # counted from the first request: the client's first-call set-up is not the endpoint's time)
    assert calls[1] - calls[0] < SLOW_S - 1 and given_up - calls[1] < SLOW_S - 1
    assert given_up - calls[0] >= 1.0


def test_a_timeout_longer_than_the_answer_gets_the_answer(slow_endpoint, monkeypatch):
    url, calls = slow_endpoint
    monkeypatch.setenv("LLMOPS_GENERATOR_TIMEOUT_S", str(SLOW_S + 3))
    monkeypatch.setenv("LLMOPS_GENERATOR_RETRIES", "0")
    assert make_generator(f"openai:{url}#m").generate(REQUEST) == "late"
    assert len(calls) == 1


def test_bad_timeout_settings_name_the_variable(monkeypatch):
    monkeypatch.setenv("LLMOPS_GENERATOR_TIMEOUT_S", "-1")
    with pytest.raises(ValueError, match="LLMOPS_GENERATOR_TIMEOUT_S"):
        make_generator("openai:http://127.0.0.1:9/v1#m")
