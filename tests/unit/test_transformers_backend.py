"""The transformers backend on tiny local models: streaming equals completing; concurrent requests
share forward passes (step-level batching) with the same output as alone; a stream closed early
(the client went away) frees its batch slot."""

import threading
import time

import pytest

from llmops.llm.backends import TransformersBackend, make_backend
from llmops.llm.batching import _held_back, cut_at_stop
from llmops.llm.tiny import build_tiny_causal_lm
from llmops.llm.types import BackendError, Completion, SamplingParams

QUESTIONS = ["hi", "Which alias moves on promote?", "x",
             "A longer question about the registry, its champion alias and what a rollback does"]  # fmt: skip


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    # a tiny Llama (SmolLM2's architecture): its greedy outputs vary, unlike the tiny GPT-2's
    folder = build_tiny_causal_lm(tmp_path_factory.mktemp("m") / "tiny", vocab_size=300, architecture="llama")
    return TransformersBackend(str(folder), max_batch=8)


@pytest.fixture(scope="module")
def prompts(backend):
    return [backend.render([{"role": "user", "content": q}]) for q in QUESTIONS]


def concurrently(backend, prompts, params_of):
    """Each prompt's Completion, all submitted at once from threads of their own."""
    results: list = [None] * len(prompts)
    start = threading.Barrier(len(prompts))

    def run(i):
        start.wait()
        results[i] = backend.complete(prompts[i], params_of(i))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_stream_and_complete_agree(backend, prompts):
    done = backend.complete(prompts[1], SamplingParams(max_tokens=6))
    *pieces, last = backend.stream(prompts[1], SamplingParams(max_tokens=6))
    assert isinstance(last, Completion) and last.completion_tokens == done.completion_tokens
    assert "".join(pieces) == last.text == done.text
    assert done.prompt_tokens == backend.count_tokens(prompts[1])


def test_alone_greedy_equals_model_generate(backend, prompts):
    for prompt in prompts[:2]:
        enc = backend.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        out = backend.model.generate(**enc, max_new_tokens=12, do_sample=False,
                                     pad_token_id=backend.tokenizer.pad_token_id)  # fmt: skip
        expected = backend.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        assert backend.complete(prompt, SamplingParams(max_tokens=12)).text == expected


def test_concurrent_requests_share_forward_passes_and_greedy_output_equals_alone(backend, prompts):
    alone = [backend.complete(p, SamplingParams(max_tokens=16)) for p in prompts]
    forwards: list[int] = []
    hook = backend.model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        batched = concurrently(backend, prompts, lambda i: SamplingParams(max_tokens=16))
    finally:
        hook.remove()
    tokens = sum(c.completion_tokens for c in batched)
    assert len(set(c.text for c in alone)) > 1, "the prompts should not all give the same text"
    assert [c.text for c in batched] == [c.text for c in alone]
    assert [c.completion_tokens for c in batched] == [c.completion_tokens for c in alone]
    # 4 requests x 16 tokens one at a time would be 64 forward passes; batched, about 16 + prefills
    assert len(forwards) < tokens / 2, (len(forwards), tokens)


def test_a_shared_system_turn_is_prefilled_once_and_changes_no_output(backend):
    system = {"role": "system", "content": "You answer questions about the llmops registry and its aliases."}
    prompts = [backend.render([system, {"role": "user", "content": q}]) for q in QUESTIONS]
    engine = backend.engine
    engine._prefix = None
    expected = []
    for prompt in prompts:  # model.generate: the whole prompt prefilled, one request at a time
        enc = backend.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        out = backend.model.generate(**enc, max_new_tokens=12, do_sample=False,
                                     pad_token_id=backend.tokenizer.pad_token_id)  # fmt: skip
        expected.append(
            backend.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        )
    prefilled: list[int] = []  # tokens of each prefill forward pass (the decode steps have 1 a row)
    hook = backend.model.register_forward_hook(
        lambda module, args, kwargs, out: prefilled.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        batched = concurrently(backend, prompts, lambda i: SamplingParams(max_tokens=12))
        alone = backend.complete(prompts[1], SamplingParams(max_tokens=12))
    finally:
        hook.remove()
    assert [c.text for c in batched] == expected and alone.text == expected[1]
    ids = [backend.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    common = next(n for n in range(len(ids[0])) if len({tuple(i[: n + 1]) for i in ids}) > 1)
    assert common >= 16 and engine._prefix is not None and engine._prefix[0][:common] == ids[0][:common]
    # the shared prefix once, then only the rest of each prompt (decode steps add 1 token a row)
    longest = max(len(i) for i in ids)
    assert prefilled[0] >= common and all(n <= longest - common for n in prefilled[1:]), prefilled


def test_a_seed_gives_the_same_sample_alone_and_in_a_batch(backend, prompts):
    sampled = SamplingParams(max_tokens=16, temperature=1.0, seed=11)
    alone = backend.complete(prompts[1], sampled)
    batched = concurrently(backend, prompts, lambda i: sampled if i == 1 else
                           SamplingParams(max_tokens=16, temperature=0.7, seed=i))  # fmt: skip
    assert batched[1].text == alone.text
    assert (
        backend.complete(prompts[1], SamplingParams(max_tokens=16, temperature=1.0, seed=12)).text
        != alone.text
    )


def test_a_vanishing_temperature_samples_as_greedy(backend, prompts):
    greedy = backend.complete(prompts[1], SamplingParams(max_tokens=8))
    for temperature in (1e-236, 1e-6):  # 1e-236 once overflowed the logits into NaN: a 500
        tiny = backend.complete(prompts[1], SamplingParams(max_tokens=8, temperature=temperature, seed=1))
        assert tiny.text == greedy.text
    # and the sampler itself, below the greedy rule: no NaN, the largest logit
    import torch

    from llmops.llm.batching import Request

    logits = torch.tensor([0.5, 3.0, 2.999, -1.0])
    request = Request(ids=[1], params=SamplingParams(temperature=1e-300), generator=torch.Generator())
    assert backend.engine._sample(logits, request) == 1


def test_a_request_that_fails_does_not_fail_the_batch(backend, prompts, monkeypatch):
    sample = backend.engine._sample

    def failing_for_seed_13(logits, request):
        if request.params.seed == 13:
            raise RuntimeError("injected sampling failure")
        return sample(logits, request)

    monkeypatch.setattr(backend.engine, "_sample", failing_for_seed_13)
    results: list = [None] * len(prompts)

    def run(i):
        try:
            results[i] = backend.complete(
                prompts[i], SamplingParams(max_tokens=8, temperature=1.0, seed=10 + i)
            )
        except RuntimeError as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert isinstance(results[3], RuntimeError)  # seed 13
    assert all(isinstance(r, Completion) and r.completion_tokens == 8 for r in results[:3])


def test_closing_a_stream_frees_its_slot_and_leaves_the_others(backend, prompts):
    long = SamplingParams(max_tokens=400, temperature=1.0, seed=0)
    stream = backend.stream(prompts[0], long)
    other = backend.stream(prompts[1], SamplingParams(max_tokens=40))
    next(stream)
    stream.close()
    *_, done = other  # the other request runs to its end
    assert isinstance(done, Completion) and done.completion_tokens == 40
    deadline = time.monotonic() + 10
    while backend.engine.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.engine.active == 0, "a closed stream still holds its batch slot"


def test_more_requests_than_slots_wait_and_all_finish(backend, prompts):
    many = prompts * 3  # 12 requests, 8 slots
    results = concurrently(backend, many, lambda i: SamplingParams(max_tokens=8))
    assert all(r is not None and r.completion_tokens == 8 for r in results)


def test_stop_strings_end_the_request_and_are_not_streamed():
    assert cut_at_stop("abc<|x|>def", ("<|x|>",)) == ("abc", True)
    assert _held_back("answer <|", ("<|x|>",)) == 2  # could be the start of the stop string
    assert _held_back("answer", ("<|x|>",)) == 0


def test_settings_are_checked(backend):
    with pytest.raises(BackendError, match="backend: 'tgi' is not one of auto, transformers, vllm"):
        make_backend("x", "tgi")
    with pytest.raises(BackendError, match="max_batch: must be >= 1"):
        TransformersBackend(backend.model_path, max_batch=0)
    from llmops.llm.vllm_backend import vllm_available

    if not vllm_available():
        with pytest.raises(BackendError, match="backend: vllm needs the"):
            make_backend("x", "vllm")


@pytest.mark.gpu
def test_batching_on_cuda(tmp_path):
    """On CUDA (bf16 where supported) concurrent requests share forward passes too, and a seed
    gives one sample. (In bf16 a row's logits in a batch may differ from alone in more than the
    last bits, so batched == alone is checked in float32 on the CPU only.)"""
    folder = build_tiny_causal_lm(tmp_path / "tiny", vocab_size=300, architecture="llama")
    cuda = TransformersBackend(str(folder), device="cuda", max_batch=8)
    prompts = [cuda.render([{"role": "user", "content": q}]) for q in QUESTIONS]
    forwards: list[int] = []
    hook = cuda.model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        batched = concurrently(cuda, prompts, lambda i: SamplingParams(max_tokens=16))
    finally:
        hook.remove()
    assert len(forwards) < sum(c.completion_tokens for c in batched) / 2
    seeded = SamplingParams(max_tokens=16, temperature=1.0, seed=2)
    assert cuda.complete(prompts[2], seeded).text == cuda.complete(prompts[2], seeded).text


def test_a_retired_backend_finishes_its_requests_then_its_engine_stops(backend, prompts):
    """close() (a service swapped in another release): the request in flight is answered in full,
    the engine thread ends without waiting out its idle time, and a request that read the old
    backend just before the swap is still answered."""
    old = TransformersBackend(backend.model_path, max_batch=8)
    params = SamplingParams(max_tokens=12)
    stream = old.stream(prompts[1], params)
    first = next(stream)
    old.close()
    *rest, done = [first, *stream]
    assert isinstance(done, Completion) and "".join(rest) == done.text
    deadline = time.monotonic() + 5
    while old.engine._thread is not None:
        assert time.monotonic() < deadline, "the retired engine's thread did not end"
        time.sleep(0.02)
    late = old.complete(prompts[0], params)
    assert late.text == backend.complete(prompts[0], params).text and old.engine.active == 0


def test_prompts_are_prefilled_in_buckets_of_similar_length():
    from llmops.llm.batching import Request, length_buckets

    group = [Request(ids=[1] * n, params=SamplingParams()) for n in (600, 900, 510, 880, 700, 760)]
    buckets = length_buckets(group)
    assert [[len(r.ids) for r in b] for b in buckets] == [[900, 880, 760], [700, 600], [510]]
    assert sorted(map(id, group)) == sorted(id(r) for b in buckets for r in b)  # every request once
