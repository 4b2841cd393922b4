"""The transformers backend on the tiny local model: streaming equals completing, and a stream
closed early (the client went away) stops its generation and frees the model for the next one."""

import time

import pytest

from llmops.llm.backends import BackendError, Completion, SamplingParams, TransformersBackend, make_backend
from llmops.llm.tiny import build_tiny_causal_lm


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return TransformersBackend(
        str(build_tiny_causal_lm(tmp_path_factory.mktemp("m") / "tiny", vocab_size=300))
    )


def test_stream_and_complete_agree(backend):
    prompt = backend.render([{"role": "user", "content": "Which alias moves?"}])
    done = backend.complete(prompt, SamplingParams(max_tokens=6))
    *pieces, last = backend.stream(prompt, SamplingParams(max_tokens=6))
    assert isinstance(last, Completion) and last.completion_tokens == done.completion_tokens
    assert "".join(pieces) == last.text == done.text
    assert done.prompt_tokens == backend.count_tokens(prompt)


def test_closing_a_stream_stops_its_generation(backend):
    prompt = backend.render([{"role": "user", "content": "Talk for a long time"}])
    stream = backend.stream(prompt, SamplingParams(max_tokens=5000, temperature=1.0, seed=0))
    next(stream)
    started = time.monotonic()
    stream.close()
    assert backend._lock.acquire(timeout=10), "the model is still generating for a closed stream"
    backend._lock.release()
    assert time.monotonic() - started < 10
    assert backend.complete(prompt, SamplingParams(max_tokens=2)).completion_tokens <= 2


def test_backend_setting_is_checked():
    with pytest.raises(BackendError, match="backend: 'tgi' is not one of auto, transformers, vllm"):
        make_backend("x", "tgi")
    from llmops.llm.vllm_backend import vllm_available

    if not vllm_available():
        with pytest.raises(BackendError, match="backend: vllm needs the"):
            make_backend("x", "vllm")
