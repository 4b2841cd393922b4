"""Chat/completion backends behind one interface, for services/llm.py and the RAG generators.

    transformers  any causal LM folder (or hub id when online), CPU or CUDA; bf16 on CUDA when
                  the device supports it. The laptop and CI backend.
    vllm          vLLM's engine on a GPU (the ``[gpu]`` extra): continuous batching, paged
                  attention; ``gpu_memory_utilization`` and ``max_model_len`` configurable.

``make_backend(model, backend="auto", adapter=None)`` picks vLLM when it is installed and CUDA is
present, else transformers. With ``adapter`` (a LoRA adapter folder from flows/finetune_llm.py),
transformers merges it into the base weights at load; vLLM applies it per request (LoRA support).
Both render chat messages with the tokenizer's chat template and count prompt and completion
tokens the same way, so usage numbers agree across backends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from llmops.errors import LlmopsError


class BackendError(LlmopsError, ValueError):
    """A model or setting a backend cannot use; names the setting."""


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of text or a stop string) or "length" (max_tokens reached)


@dataclass
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


class Backend(Protocol):
    name: str
    model_path: str
    adapter_path: str | None
    max_context: int

    def render(self, messages: list[dict[str, str]]) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def complete(self, prompt: str, params: SamplingParams) -> Completion: ...

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[str | Completion]: ...


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    positions = [text.find(s) for s in stop if s and s in text]
    return (text[: min(positions)], True) if positions else (text, False)


def stop_when(event: threading.Event) -> Any:
    """A transformers StoppingCriteria that ends every sequence once ``event`` is set."""
    import torch
    from transformers import StoppingCriteria

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full(
                (input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device
            )

    return Cancelled()


class TransformersBackend:
    """A causal LM with transformers. One generation at a time per process (a lock): on a CPU
    concurrent generations only fight over the same cores."""

    name = "transformers"

    def __init__(
        self, model: str, device: str | None = None, adapter: str | None = None, revision: str | None = None
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        local = Path(model).expanduser()
        source = str(local) if local.exists() else model
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        try:
            # the adapter folder carries the tokenizer it was trained with (pad token, chat template)
            self.tokenizer = AutoTokenizer.from_pretrained(
                adapter or source, revision=None if adapter else revision
            )
            self.model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, revision=revision)
            if adapter:
                from peft import PeftModel

                self.model = PeftModel.from_pretrained(self.model, adapter).merge_and_unload()
            self.model = self.model.to(self.device)
        except (OSError, ValueError) as exc:
            raise BackendError(
                f"model: cannot load {model!r}{f' with {adapter!r}' if adapter else ''}: {exc}"
            ) from None
        self.model.eval()
        self.model_path = str(local.resolve()) if local.exists() else model
        self.adapter_path = adapter
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 0) or 2048)
        self._lock = threading.Lock()

    def render(self, messages: list[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n".join([*(f"{m['role']}: {m['content']}" for m in messages), "assistant:"])

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _inputs(self, prompt: str):
        return self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)

    def _generate_kwargs(self, params: SamplingParams) -> dict[str, Any]:
        import torch

        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "do_sample": params.temperature > 0,
            "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        }
        if params.temperature > 0:
            kwargs |= {"temperature": params.temperature, "top_p": params.top_p}
            if params.seed is not None:
                torch.manual_seed(params.seed)
        return kwargs

    def complete(self, prompt: str, params: SamplingParams) -> Completion:
        import torch

        inputs = self._inputs(prompt)
        with self._lock, torch.inference_mode():
            output = self.model.generate(**inputs, **self._generate_kwargs(params))
        new = output[0, inputs["input_ids"].shape[1] :]
        text, stopped = _cut_at_stop(self.tokenizer.decode(new, skip_special_tokens=True), params.stop)
        return self._completion(inputs, new, text, stopped, params)

    def _completion(self, inputs, new, text: str, stopped: bool, params: SamplingParams) -> Completion:
        ended = bool(len(new)) and int(new[-1]) == self.tokenizer.eos_token_id
        return Completion(
            text=text,
            prompt_tokens=int(inputs["input_ids"].shape[1]),
            completion_tokens=len(new),
            finish_reason="stop" if stopped or ended or len(new) < params.max_tokens else "length",
        )

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[str | Completion]:
        """Text pieces as they are generated, then the Completion (usage, finish reason)."""
        import torch
        from transformers import TextIteratorStreamer

        inputs = self._inputs(prompt)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        counted: dict[str, Any] = {}
        cancelled = threading.Event()  # set when the reader closes the stream early

        cancel = stop_when(cancelled)

        def run() -> None:
            try:
                with self._lock, torch.inference_mode():
                    output = self.model.generate(**inputs, streamer=streamer, stopping_criteria=[cancel],
                                                 **self._generate_kwargs(params))  # fmt: skip
                counted["new"] = output[0, inputs["input_ids"].shape[1] :]
            except Exception as exc:  # end the stream, or the reader would wait for text forever
                counted["error"] = exc
                streamer.end()

        worker = threading.Thread(target=run, name="generate", daemon=True)
        worker.start()
        text, stopped = "", False
        try:
            for piece in streamer:
                if stopped or not piece:
                    continue
                candidate, stopped = _cut_at_stop(text + piece, params.stop)
                delta, text = candidate[len(text) :], candidate
                if delta:
                    yield delta
        finally:  # closed early (the client went away): stop generating, free the model
            cancelled.set()
        worker.join()
        if "error" in counted:
            raise counted["error"]
        yield self._completion(inputs, counted["new"], text, stopped, params)


def make_backend(
    model: str,
    backend: str = "auto",
    adapter: str | None = None,
    revision: str | None = None,
    **vllm_options: Any,
) -> Backend:
    """The backend for ``model`` (+ a LoRA ``adapter``): ``transformers``, ``vllm`` or ``auto``
    (vLLM on CUDA when installed)."""
    if backend not in ("auto", "transformers", "vllm"):
        raise BackendError(f"backend: {backend!r} is not one of auto, transformers, vllm")
    if backend in ("auto", "vllm"):
        from llmops.llm.vllm_backend import vllm_available

        if vllm_available():
            from llmops.llm.vllm_backend import VLLMBackend

            try:
                return VLLMBackend(model, adapter=adapter, revision=revision, **vllm_options)
            except Exception as exc:
                if backend == "vllm":
                    raise
                # e.g. an architecture vLLM serves without LoRA support: still serve, slower
                logging.getLogger(__name__).warning(
                    "vLLM could not load %s%s (%s: %s); serving it with transformers",
                    model, f" with {adapter}" if adapter else "", type(exc).__name__, exc,
                )  # fmt: skip
        elif backend == "vllm":
            raise BackendError("backend: vllm needs the [gpu] extra and a CUDA GPU")
    return TransformersBackend(model, adapter=adapter, revision=revision)
