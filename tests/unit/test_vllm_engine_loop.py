"""The vLLM backend's engine loop without a GPU: one thread drives a stand-in engine that behaves
like vLLM's (add_request / step / has_unfinished_requests, cumulative outputs), and concurrent
streams must each get exactly their own text, usage and finish, batched in the same steps."""

import queue
import threading
import time
from types import SimpleNamespace

import pytest

from llmops.llm.types import Completion, SamplingParams
from llmops.llm.vllm_backend import VLLMBackend


class StepEngine:
    """Each step appends one word to every running request; a request ends after max_tokens."""

    def __init__(self, fail_steps: int = 0):
        self.running: dict[str, dict] = {}
        self.batch_sizes: list[int] = []
        self.aborted: list[str] = []
        self.fail_steps = fail_steps
        self.lock = threading.Lock()  # the real engine has none: calls from two threads would race

    def abort_request(self, request_ids):
        self.aborted.extend(request_ids)
        for request_id in request_ids:
            self.running.pop(request_id, None)

    def add_request(self, request_id, prompt, sampling, lora_request=None):
        if sampling.max_tokens == 0:
            raise ValueError("max_tokens: must be at least 1")
        text = "".join(map(chr, prompt["prompt_token_ids"]))  # the backend sends token ids
        self.running[request_id] = {"prompt": text, "words": [], "max": sampling.max_tokens}

    def has_unfinished_requests(self):
        return bool(self.running)

    def step(self):
        assert self.lock.acquire(blocking=False), "step() called from two threads at once"
        assert self.running, "an idle step() can block the real engine for ever"
        time.sleep(0.005)  # a step takes time: requests that arrive meanwhile join the next one
        try:
            if self.fail_steps:
                self.fail_steps -= 1
                raise RuntimeError("engine step failed")
            self.batch_sizes.append(len(self.running))
            outputs = []
            for request_id, state in list(self.running.items()):
                state["words"].append(f"{state['prompt']}{len(state['words'])}")
                finished = len(state["words"]) == state["max"]
                text = " ".join(state["words"])
                choice = SimpleNamespace(text=text, token_ids=list(range(len(state["words"]))),
                                         finish_reason="length" if finished else None)  # fmt: skip
                outputs.append(SimpleNamespace(request_id=request_id, outputs=[choice], finished=finished,
                                               prompt_token_ids=[0] * len(state["prompt"])))  # fmt: skip
                if finished:
                    del self.running[request_id]
            return outputs
        finally:
            self.lock.release()


def backend_on(engine):
    backend = object.__new__(VLLMBackend)  # no vLLM here: the engine loop alone
    backend.llm = SimpleNamespace(llm_engine=engine)
    backend.tokenizer = lambda text, add_special_tokens: {"input_ids": [ord(c) for c in text]}
    backend._lora = None
    backend._sampling = lambda params: SimpleNamespace(max_tokens=params.max_tokens)
    backend._pending, backend._outboxes = queue.Queue(), {}
    backend._stopped, backend.model_path = threading.Event(), "test-model"
    threading.Thread(target=backend._run, daemon=True).start()
    return backend


def test_concurrent_streams_get_their_own_outputs_in_shared_steps():
    engine = StepEngine()
    backend = backend_on(engine)
    results: dict[str, list] = {}

    start = threading.Barrier(12)

    def client(prompt, n):
        start.wait()
        results[prompt] = list(backend.stream(prompt, SamplingParams(max_tokens=n)))

    threads = [threading.Thread(target=client, args=(f"p{i}-", 3 + i % 4)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 12
    for i in range(12):
        prompt, n = f"p{i}-", 3 + i % 4
        *pieces, done = results[prompt]
        assert isinstance(done, Completion) and done.completion_tokens == n and done.finish_reason == "length"
        assert "".join(pieces) == done.text == " ".join(f"{prompt}{k}" for k in range(n))
        assert done.prompt_tokens == len(prompt)
    assert max(engine.batch_sizes) > 1  # requests were stepped together, not one after another


def test_complete_goes_through_the_loop_and_errors_reach_the_caller():
    backend = backend_on(StepEngine())
    done = backend.complete("q", SamplingParams(max_tokens=2))
    assert done.text == "q0 q1" and done.completion_tokens == 2
    try:
        backend.complete("q", SamplingParams(max_tokens=0))
    except ValueError as exc:
        assert "max_tokens" in str(exc)
    else:
        raise AssertionError("a request the engine refuses must raise in its caller")
    assert backend.complete("again", SamplingParams(max_tokens=1)).text == "again0"  # the loop lives on


def test_closing_a_stream_early_aborts_its_request():
    engine = StepEngine()
    backend = backend_on(engine)
    stream = backend.stream("long-", SamplingParams(max_tokens=1000))
    assert next(stream) == "long-0"
    stream.close()  # the client went away
    deadline = time.monotonic() + 5
    while not engine.aborted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(engine.aborted) == 1 and not engine.running
    assert backend.complete("next", SamplingParams(max_tokens=2)).text == "next0 next1"


def test_a_failing_step_fails_its_requests_and_the_loop_goes_on():
    engine = StepEngine(fail_steps=1)
    backend = backend_on(engine)
    with pytest.raises(RuntimeError, match="engine step failed"):
        backend.complete("a", SamplingParams(max_tokens=3))
    assert engine.aborted and not engine.running
    assert backend.complete("b", SamplingParams(max_tokens=2)).text == "b0 b1"


def test_a_retired_engine_finishes_what_it_holds_then_stops(monkeypatch):
    """After a swap the old engine serves the requests that read it before, then lets go of the
    engine (its GPU memory) once none came for the grace period; a late request is told to retry."""
    from llmops.llm import vllm_backend
    from llmops.llm.types import BackendError

    monkeypatch.setattr(vllm_backend, "RETIRE_GRACE_S", 0.3)
    backend = backend_on(StepEngine())
    stream = backend.stream("held-", SamplingParams(max_tokens=5))
    assert next(stream) == "held-0"
    backend.close()
    *pieces, done = list(stream)
    assert done.completion_tokens == 5 and "".join(["held-0", *pieces]) == done.text
    deadline = time.monotonic() + 5
    while not backend._stopped.is_set() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert backend._stopped.is_set() and backend.llm is None
    with pytest.raises(BackendError, match="retired"):
        backend.complete("late", SamplingParams(max_tokens=1))
