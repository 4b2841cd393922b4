"""Step-level batching for the transformers backend: concurrent requests share forward passes.

One engine thread owns the model. Between two decode steps it takes the requests that arrived,
prefills them together (left padding + attention mask), samples their first token and merges
their KV cache into the running batch (both caches padded on the left to one length); then one
forward pass advances every running request by one token. A request leaves the batch as soon as
it ends (end of text, a stop string, ``max_tokens``) or its reader goes away (``cancel``): its row
is dropped from the cache at the next step boundary, and columns that only padding uses are cut.
The KV of a prompt prefix that requests share (a chat template's system turn) is computed once and
kept: a joining request prefills only the rest of its prompt.

Measured on 2 CPU cores (STACK.md): this beats transformers' own continuous batching
(``generate_batch``, paged attention) by several times here, and one request alone runs the same
forward passes as ``model.generate``.

Sampling is per request: temperature, top_p and a ``torch.Generator`` of its own, seeded with the
request's seed, so a seeded request draws the same random numbers whether it runs alone or in a
batch. What can differ in a batch: a row's logits are computed in a bigger matrix product with
masked padding, so they may differ from the same request alone in the last bits of float32;
greedy decoding picks the same tokens unless two logits tie to within that rounding (the tests
check equality on the tiny model; ``docs/llm.md`` says this).
"""

from __future__ import annotations

import inspect
import logging
import queue
import random
import threading
from dataclasses import dataclass, field
from typing import Any

from llmops.llm.types import Completion, SamplingParams

log = logging.getLogger(__name__)

IDLE_EXIT_S = 30.0  # the engine thread ends after this long without work; the next request restarts it
GREEDY_BELOW = 1e-5  # a temperature under this samples as greedy (vLLM's rule too)
MIN_SHARED_PREFIX = 8  # tokens: a shorter common prefix is not worth a forward pass of its own


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    positions = [text.find(s) for s in stop if s and s in text]
    return (text[: min(positions)], True) if positions else (text, False)


def _held_back(text: str, stop: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string: they are
    not streamed until the next tokens show whether the stop string follows."""
    held = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), held, -1):
            if text.endswith(s[:k]):
                held = k
                break
    return held


def _common_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass(eq=False)
class Request:
    """One generation in the engine. The reader takes text pieces, then a Completion (or an
    exception), from ``outbox``; ``cancel()`` frees its batch slot at the next step."""

    ids: list[int]
    params: SamplingParams
    outbox: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    generator: Any = None  # torch.Generator when sampling
    generated: list[int] = field(default_factory=list)
    sent: str = ""  # text handed to the reader so far
    last: int = -1  # the last sampled token, fed to the next step
    done: bool = False  # its Completion is out

    def cancel(self) -> None:
        if not self.cancelled.is_set():
            self.cancelled.set()
            self.outbox.put(CANCELLED)  # wakes a reader waiting on the outbox


CANCELLED = object()


BUCKET_SHORTEST = 0.8  # a prompt joins a prefill bucket when at least this share of its longest


def length_buckets(group: list[Request]) -> list[list[Request]]:
    """``group`` longest prompt first, cut where a prompt is shorter than ``BUCKET_SHORTEST`` of
    its bucket's longest: each bucket pads at most a fifth of its prefill."""
    buckets: list[list[Request]] = []
    for request in sorted(group, key=lambda r: -len(r.ids)):
        if buckets and len(request.ids) >= BUCKET_SHORTEST * len(buckets[-1][0].ids):
            buckets[-1].append(request)
        else:
            buckets.append([request])
    return buckets


class RequestStream:
    """The reader's iterator over one request: text pieces, then its Completion. ``cancel()`` (or
    ``close()``) may come from any thread, also while another thread waits in ``next``: that
    wait ends, and the engine drops the request at its next step."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self._finished = False

    def __iter__(self) -> RequestStream:
        return self

    def __next__(self) -> str | Completion:
        if self._finished:
            raise StopIteration
        item = self.request.outbox.get()
        if item is CANCELLED:
            self._finished = True
            raise StopIteration
        if isinstance(item, Exception):
            self._finished = True
            raise item
        if isinstance(item, Completion):
            self._finished = True
        return item

    def cancel(self) -> None:
        self._finished = True
        self.request.cancel()

    close = cancel

    def __del__(self) -> None:
        self.request.cancel()


class BatchEngine:
    """The step loop over ``model`` (a transformers causal LM, eval mode) for up to ``max_batch``
    requests at once; more wait for a free slot in arrival order."""

    def __init__(self, model: Any, tokenizer: Any, device: str, max_batch: int = 32,
                 eos_ids: set[int] | None = None):  # fmt: skip
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.max_batch = max(1, int(max_batch))
        self.eos_ids = eos_ids or set()
        self._pending: queue.Queue[Request | None] = queue.Queue()  # None: close() woke it
        self._waiting: list[Request] = []
        self._running: list[Request] = []  # one row of the cache each, in order
        self._cache: Any = None
        self._mask: Any = None  # [rows, columns] 1 where a column holds a real token
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closing = False  # a retired release: the thread ends as soon as it is idle
        self._prefix: tuple[list[int], list[tuple[Any, Any]]] | None = None  # ids, per-layer KV (one row)
        self._last_logits_only = "logits_to_keep" in inspect.signature(model.forward).parameters

    # ---- the reader's side -----------------------------------------------------------------------

    def submit(self, ids: list[int], params: SamplingParams) -> Request:
        import torch

        request = Request(ids=list(ids), params=params)
        if params.temperature > 0:
            seed = params.seed if params.seed is not None else random.getrandbits(63)
            request.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._pending.put(request)
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
                self._thread.start()
        return request

    def close(self) -> None:
        """The release this engine serves was replaced: its thread ends as soon as the requests it
        holds are finished, not after IDLE_EXIT_S. A request submitted later (it read the old
        release just before the swap) still runs, on a thread started for it, so none fails."""
        with self._start_lock:
            self._closing = True
            if self._thread is not None:
                self._pending.put(None)  # wakes the thread if it waits idle

    @property
    def active(self) -> int:
        """Requests holding a batch slot or waiting for one (what a cancelled request leaves)."""
        return len(self._running) + len(self._waiting) + self._pending.qsize()

    # ---- the engine thread -----------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        while True:
            if not self._running and not self._waiting:
                try:
                    woken = self._pending.get(timeout=0.01 if self._closing else IDLE_EXIT_S)
                except queue.Empty:
                    with self._start_lock:  # a submit racing this exit sees the thread gone
                        if self._pending.empty():
                            self._thread = None
                            if self._closing:
                                self._prefix = None  # the kept KV of a retired model
                            return
                    continue
                if woken is None:  # close(): look again, with the short wait
                    continue
                self._waiting.append(woken)
            while True:
                try:
                    request = self._pending.get_nowait()
                except queue.Empty:
                    break
                if request is not None:
                    self._waiting.append(request)
            for request in [r for r in self._waiting if r.cancelled.is_set()]:
                self._waiting.remove(request)
            try:
                with torch.inference_mode():
                    if self._waiting and len(self._running) < self.max_batch:
                        self._admit()
                    if self._running:
                        self._step()
            except Exception as exc:  # every request in the batch gets the error; none hangs
                log.exception("generation failed for %d requests", len(self._running))
                for request in self._running:
                    request.outbox.put(exc)
                self._running, self._cache, self._mask = [], None, None

    def _admit(self) -> None:
        """Prefill the waiting requests that fit and merge them into the batch, in buckets of
        similar prompt length (:func:`length_buckets`): one prefill pads every prompt to the
        longest, and on RAG prompts of 500 to 900 tokens that padding was 28 % of the work."""
        free = self.max_batch - len(self._running)
        group, self._waiting = self._waiting[:free], self._waiting[free:]
        for bucket in length_buckets(group):
            self._prefill(bucket)

    def _prefill(self, group: list[Request]) -> None:
        """Prefill ``group`` together and merge it into the batch. The tokens they share with the
        kept prefix (a chat template's system turn) are not computed again: their KV is copied
        into each row, and only the rest of each prompt is prefilled."""
        import torch
        from transformers import DynamicCache

        try:
            shared, prefix = self._shared_prefix(group)
            rests = [r.ids[shared:] for r in group]
            width = max(len(rest) for rest in rests)
            pad = self.tokenizer.pad_token_id or 0
            ids = torch.tensor([[pad] * (width - len(rest)) + rest for rest in rests], device=self.device)
            # each row: [shared prefix][padding][the rest of its prompt]; positions skip the padding
            rows = [[1] * shared + [0] * (width - len(rest)) + [1] * len(rest) for rest in rests]
            mask = torch.tensor(rows, device=self.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
            cache = DynamicCache()
            for index, (keys, values) in enumerate(prefix):
                n = len(group)
                cache.update(keys[:, :, :shared].expand(n, -1, -1, -1),
                             values[:, :, :shared].expand(n, -1, -1, -1), index)  # fmt: skip
            logits = self._forward(ids, mask, positions, cache)
        except Exception as exc:  # fails these requests only; the running batch goes on
            log.exception("prefill failed for %d requests", len(group))
            for request in group:
                request.outbox.put(exc)
            return
        self._merge(cache, mask)
        self._running.extend(group)
        self._after_forward(group, logits)

    def _shared_prefix(self, group: list[Request]) -> tuple[int, list[tuple[Any, Any]]]:
        """How many leading prompt tokens every request of ``group`` shares with the kept prefix,
        and its per-layer (keys, values) for one row. A group that shares too little with it
        computes its own common prefix, which is kept instead. At least one token of each prompt
        is left to prefill: its logits give the first new token."""
        import torch
        from transformers import DynamicCache

        common = min(len(r.ids) for r in group) - 1
        for request in group[1:]:
            common = min(common, _common_length(group[0].ids, request.ids))
        if self._prefix is not None:
            kept_ids, kept = self._prefix
            shared = min(common, _common_length(kept_ids, group[0].ids))
            if shared >= MIN_SHARED_PREFIX:
                return shared, kept
        if common < MIN_SHARED_PREFIX:
            return 0, []
        ids = torch.tensor([group[0].ids[:common]], device=self.device)
        cache = DynamicCache()
        self._forward(ids, torch.ones_like(ids), torch.arange(common, device=self.device)[None], cache)
        self._prefix = (group[0].ids[:common], [(layer.keys, layer.values) for layer in cache.layers])
        return common, self._prefix[1]

    def _step(self) -> None:
        """One decode step: every running request's last token in, one new token each out."""
        import torch

        ids = torch.tensor([[r.last] for r in self._running], device=self.device)
        positions = self._mask.sum(-1, keepdim=True)  # real tokens before this one
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self._running), 1))], dim=-1)
        logits = self._forward(ids, self._mask, positions, self._cache)
        self._after_forward(list(self._running), logits)

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                  "past_key_values": cache, "use_cache": True}  # fmt: skip
        if self._last_logits_only:  # a prefill skips the vocabulary projection of all but the last position
            inputs["logits_to_keep"] = 1
        return self.model(**inputs).logits[:, -1, :].float()

    def _merge(self, cache: Any, mask: Any) -> None:
        """Join a prefilled group's cache to the running one, padding the shorter on the left."""
        import torch

        if self._cache is None or not self._running:
            self._cache, self._mask = cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])

        def left_pad(t: Any, dim: int) -> Any:
            missing = width - t.shape[dim]
            if not missing:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([left_pad(mine.keys, -2), left_pad(theirs.keys, -2)], dim=0)
            mine.values = torch.cat([left_pad(mine.values, -2), left_pad(theirs.values, -2)], dim=0)
        self._mask = torch.cat([left_pad(self._mask, 1), left_pad(mask, 1)], dim=0)

    def _after_forward(self, rows: list[Request], logits: Any) -> None:
        """Sample each row's next token, hand out its text, and drop the rows that ended."""
        import torch

        greedy = logits.argmax(dim=-1).tolist()
        for i, request in enumerate(rows):
            params = request.params
            try:
                token = greedy[i] if params.temperature < GREEDY_BELOW else self._sample(logits[i], request)
            except Exception as exc:  # this request fails; the others in the batch go on
                log.exception("sampling failed for one request")
                request.done = True
                request.outbox.put(exc)
                continue
            request.generated.append(token)
            request.last = token
            self._emit(request)
        keep = [i for i, r in enumerate(self._running) if not self._ended(r)]
        if len(keep) == len(self._running):
            return
        self._running = [self._running[i] for i in keep]
        if not self._running:
            self._cache, self._mask = None, None
            return
        index = torch.tensor(keep, device=self.device)
        self._mask = self._mask[index]
        first = int(self._mask.any(dim=0).int().argmax())  # leading columns only padding uses
        self._mask = self._mask[:, first:]
        for layer in self._cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]

    def _sample(self, logits: Any, request: Request) -> int:
        import torch

        params = request.params
        # shifted so the largest logit is 0, and the temperature kept where float32 can divide by it:
        # the others may go to -inf, never to NaN
        probs = torch.softmax((logits - logits.max()) / max(params.temperature, GREEDY_BELOW), dim=-1)
        if params.top_p < 1.0:
            ordered, order = probs.sort(descending=True)
            outside = ordered.cumsum(-1) - ordered > params.top_p  # keep the smallest set reaching top_p
            ordered[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(-1, order, ordered)
        return int(torch.multinomial(probs, 1, generator=request.generator))

    @staticmethod
    def _ended(request: Request) -> bool:
        return request.done or request.cancelled.is_set()

    def _emit(self, request: Request) -> None:
        """Stream the new text of ``request``; finish it on end of text, a stop string or its
        token budget."""
        if request.cancelled.is_set():
            return
        params = request.params
        ended = request.last in self.eos_ids
        body = request.generated[:-1] if ended else request.generated
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, params.stop)
        full = ended or stopped or len(request.generated) >= params.max_tokens
        if not full and text.endswith("\ufffd"):
            return  # half a character: wait for the bytes that complete it
        ready = text if full else text[: len(text) - _held_back(text, params.stop)]
        if ready.startswith(request.sent) and len(ready) > len(request.sent):
            request.outbox.put(ready[len(request.sent) :])
            request.sent = ready
        if full:
            request.done = True
            request.outbox.put(
                Completion(
                    text=request.sent,
                    prompt_tokens=len(request.ids),
                    completion_tokens=len(request.generated),
                    finish_reason="stop" if ended or stopped else "length",
                )
            )
