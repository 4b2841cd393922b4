"""The vLLM backend (GPU; the ``[gpu]`` extra). Imported only when vLLM is installed and CUDA
is present, following BentoML's vLLM pattern: one engine per worker, sampling per request; one
thread drives the engine, so concurrent requests are batched together (continuous batching).
A LoRA adapter from flows/finetune_llm.py is served with vLLM's LoRA support: the engine loads
the base weights once and applies the adapter to every request (``LoRARequest``)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmops.llm.types import BackendError, Completion, SamplingParams

RETIRE_GRACE_S = 10.0  # a retired engine still takes requests that read it just before the swap


def vllm_available() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


class VLLMBackend:
    name = "vllm"

    def __init__(
        self,
        model: str,
        adapter: str | None = None,
        revision: str | None = None,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
    ):
        from vllm import LLM

        local = Path(model).expanduser()
        self.model_path = str(local.resolve()) if local.exists() else model
        self.adapter_path = adapter
        options: dict[str, Any] = {}
        self._lora = None
        if adapter:
            from vllm.lora.request import LoRARequest

            rank = int(json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r", 16))
            max_rank = next(
                (r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= rank), rank
            )  # vLLM's sizes
            options = {"enable_lora": True, "max_lora_rank": max_rank, "tokenizer": adapter}
            self._lora = LoRARequest("adapter", 1, adapter)
        self.llm = LLM(
            model=self.model_path,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            revision=revision,
            **options,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.max_context = int(self.llm.llm_engine.model_config.max_model_len)
        self._pending: queue.Queue[tuple] = (
            queue.Queue()
        )  # ("add", id, prompt, sampling, outbox) | ("abort", id)
        self._outboxes: dict[str, queue.Queue] = {}  # touched by the engine thread only
        self._stopped = threading.Event()
        threading.Thread(target=self._run, name="vllm-engine", daemon=True).start()

    def close(self) -> None:
        """Retire this engine (a service now serves another release): once the requests it holds
        are finished and none came for RETIRE_GRACE_S, its thread ends and the engine is let go,
        so its GPU memory can be given back."""
        self._pending.put(("close",))

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _sampling(self, params: SamplingParams) -> Any:
        from vllm import SamplingParams as VSampling

        return VSampling(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(params.stop) or None,
            seed=params.seed,
        )

    def complete(self, prompt: str, params: SamplingParams) -> Completion:
        *_, done = self.stream(prompt, params)  # through the engine loop: batched with the others
        return done

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[str | Completion]:
        """Text pieces as the engine produces them, then the Completion (usage, finish reason).
        Closing the stream early (the client went away) aborts the request in the engine."""
        if self._stopped.is_set():
            raise BackendError(f"model: {self.model_path} was retired; send the request again")
        request_id, outbox = uuid.uuid4().hex, queue.Queue()
        # token ids, not text: vLLM would add a BOS to a chat template that already has one, and
        # the prompt counted against the context would differ from what the engine sees
        ids = {"prompt_token_ids": self.tokenizer(prompt, add_special_tokens=False)["input_ids"]}
        self._pending.put(("add", request_id, ids, self._sampling(params), outbox))
        sent, out = "", None
        try:
            while True:
                out = outbox.get()
                if isinstance(out, Exception):
                    raise out
                text = out.outputs[0].text  # cumulative
                if len(text) > len(sent):
                    yield text[len(sent) :]
                    sent = text
                if out.finished:
                    break
        finally:
            if out is None or isinstance(out, Exception) or not out.finished:
                self._pending.put(("abort", request_id))
        choice = out.outputs[0]
        yield Completion(
            text=sent,
            prompt_tokens=len(out.prompt_token_ids),
            completion_tokens=len(choice.token_ids),
            finish_reason="length" if choice.finish_reason == "length" else "stop",
        )

    # ---- the engine loop ---------------------------------------------------------------------

    def _run(self) -> None:
        """The one thread that touches the engine (it is not thread-safe): it takes new requests
        and aborts, steps all running requests together (continuous batching) and hands every
        output to the stream that asked for it. It steps only while requests run (an idle step
        can block), and a failed step fails the requests it held instead of spinning on them."""
        engine = self.llm.llm_engine
        closing = False
        while True:
            if not self._outboxes:
                try:  # idle: wait for work; once retired, only as long as a late request may take
                    message = self._pending.get(timeout=RETIRE_GRACE_S if closing else None)
                except queue.Empty:
                    break
                closing = closing or message[0] == "close"
                self._take(engine, message)
            while not self._pending.empty():
                message = self._pending.get_nowait()
                closing = closing or message[0] == "close"
                self._take(engine, message)
            if not self._outboxes or not engine.has_unfinished_requests():
                continue
            try:
                outputs = engine.step()
            except Exception as exc:  # every waiting stream gets the error, none hangs
                with contextlib.suppress(Exception):
                    engine.abort_request(list(self._outboxes))
                for outbox in self._outboxes.values():
                    outbox.put(exc)
                self._outboxes.clear()
                time.sleep(0.5)  # a broken engine fails each request, not the CPU
                continue
            for out in outputs:
                outbox = self._outboxes.get(out.request_id)
                if outbox is not None:
                    outbox.put(out)
                    if out.finished:
                        del self._outboxes[out.request_id]

        self._stopped.set()
        del engine
        self.llm = None  # the engine's memory goes with its last reference
        with contextlib.suppress(Exception):
            import gc

            import torch

            gc.collect()
            torch.cuda.empty_cache()

    def _take(self, engine: Any, message: tuple) -> None:
        if message[0] == "close":
            return
        if message[0] == "abort":
            if self._outboxes.pop(message[1], None) is not None:
                engine.abort_request([message[1]])
            return
        _, request_id, prompt, sampling, outbox = message
        try:
            engine.add_request(request_id, prompt, sampling, lora_request=self._lora)
        except Exception as exc:
            outbox.put(exc)
            return
        self._outboxes[request_id] = outbox
