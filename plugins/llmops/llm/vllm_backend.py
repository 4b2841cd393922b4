"""The vLLM backend (GPU; the ``[gpu]`` extra). Imported only when vLLM is installed and CUDA
is present, following BentoML's vLLM pattern: one engine per worker, sampling per request; one
thread drives the engine, so concurrent requests are batched together (continuous batching).
A LoRA adapter from flows/finetune_llm.py is served with vLLM's LoRA support: the engine loads
the base weights once and applies the adapter to every request (``LoRARequest``)."""

from __future__ import annotations

import importlib.util
import json
import queue
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmops.llm.backends import Completion, SamplingParams


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
            **options,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.max_context = int(self.llm.llm_engine.model_config.max_model_len)
        self._pending: queue.Queue[tuple[str, str, Any, queue.Queue]] = queue.Queue()
        self._outboxes: dict[str, queue.Queue] = {}  # touched by the engine thread only
        threading.Thread(target=self._run, name="vllm-engine", daemon=True).start()

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
        """Text pieces as the engine produces them, then the Completion (usage, finish reason)."""
        outbox: queue.Queue[Any] = queue.Queue()
        self._pending.put((uuid.uuid4().hex, prompt, self._sampling(params), outbox))
        sent = ""
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
        choice = out.outputs[0]
        yield Completion(
            text=sent,
            prompt_tokens=len(out.prompt_token_ids),
            completion_tokens=len(choice.token_ids),
            finish_reason="length" if choice.finish_reason == "length" else "stop",
        )

    # ---- the engine loop ---------------------------------------------------------------------

    def _run(self) -> None:
        """The one thread that touches the engine (it is not thread-safe): it adds new requests,
        steps all running requests together (continuous batching) and hands every output to the
        stream that asked for it."""
        engine = self.llm.llm_engine
        while True:
            if not engine.has_unfinished_requests():
                self._add(engine, self._pending.get())  # idle: wait for work
            while not self._pending.empty():
                self._add(engine, self._pending.get_nowait())
            try:
                outputs = engine.step()
            except Exception as exc:  # every waiting stream gets the error, none hangs
                for outbox in self._outboxes.values():
                    outbox.put(exc)
                self._outboxes.clear()
                continue
            for out in outputs:
                outbox = self._outboxes.get(out.request_id)
                if outbox is not None:
                    outbox.put(out)
                    if out.finished:
                        del self._outboxes[out.request_id]

    def _add(self, engine: Any, request: tuple[str, str, Any, queue.Queue]) -> None:
        request_id, prompt, sampling, outbox = request
        try:
            engine.add_request(request_id, prompt, sampling, lora_request=self._lora)
        except Exception as exc:
            outbox.put(exc)
            return
        self._outboxes[request_id] = outbox
