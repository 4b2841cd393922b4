"""Chat/completion backends behind one interface, for services/llm.py and the RAG generators.

    transformers  any causal LM folder (or hub id when online), CPU or CUDA; bf16 on CUDA when
                  the device supports it. The laptop and CI backend; concurrent requests share
                  forward passes (step-level batching, llmops.llm.batching).
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from llmops.llm.types import Backend, BackendError, Completion, SamplingParams
from llmops.settings import settings_from_env

DEFAULT_MAX_BATCH = 32  # LLMOPS_LLM_MAX_BATCH's one default (services/llm.py declares it with this)


class BatchSettings(BaseModel):
    """``LLMOPS_LLM_MAX_BATCH``: requests that share one decode step, wherever a transformers
    backend is made without ``max_batch`` (a RAG generator, a benchmark)."""

    llm_max_batch: int = Field(DEFAULT_MAX_BATCH, ge=1)


class TransformersBackend:
    """A causal LM with transformers. Concurrent requests are batched step by step by one engine
    thread (llmops.llm.batching): on a CPU, one forward pass over 32 rows costs far less than 32
    passes over one row. ``max_batch`` (LLMOPS_LLM_MAX_BATCH) caps the rows of one step."""

    name = "transformers"

    def __init__(
        self,
        model: str,
        device: str | None = None,
        adapter: str | None = None,
        revision: str | None = None,
        max_batch: int | None = None,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from llmops.llm.batching import BatchEngine

        hf_logging.disable_progress_bar()  # no "Loading weights" bar in every task's or server's log

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
        if max_batch is None:
            max_batch = settings_from_env(BatchSettings).llm_max_batch
        if max_batch < 1:
            raise BackendError(f"max_batch: must be >= 1, got {max_batch}")
        if not _plain_kv_cache(self.model):
            max_batch = 1  # sliding-window or shared caches: rows cannot be merged, one at a time
        self.engine = BatchEngine(self.model, self.tokenizer, self.device, max_batch, _eos_ids(self))

    @property
    def max_batch(self) -> int:
        return self.engine.max_batch

    def close(self) -> None:
        """Retire this model (a service now serves another release): its engine thread ends once
        the requests it holds are finished; the weights go when nothing refers to them."""
        self.engine.close()

    def render(self, messages: list[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n".join([*(f"{m['role']}: {m['content']}" for m in messages), "assistant:"])

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def complete(self, prompt: str, params: SamplingParams) -> Completion:
        *_, done = self.stream(prompt, params)
        return done

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[str | Completion]:
        """Text pieces as they are generated, then the Completion (usage, finish reason). Closing
        or cancelling the stream (the client went away) frees the request's batch slot at the
        next step."""
        from llmops.llm.batching import RequestStream

        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return RequestStream(self.engine.submit(ids, params))


def _eos_ids(backend: TransformersBackend) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(backend.model, "generation_config", None), backend.tokenizer):
        value = getattr(source, "eos_token_id", None)
        ids |= set(value) if isinstance(value, list | tuple) else ({value} if value is not None else set())
    return ids


def _plain_kv_cache(model: Any) -> bool:
    """Whether every layer keeps a plain growing KV cache, which the engine can pad and merge."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:
        return False
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def make_backend(
    model: str,
    backend: str = "auto",
    adapter: str | None = None,
    revision: str | None = None,
    max_batch: int | None = None,
    **vllm_options: Any,
) -> Backend:
    """The backend for ``model`` (+ a LoRA ``adapter``): ``transformers``, ``vllm`` or ``auto``
    (vLLM on CUDA when installed). ``max_batch`` caps transformers' batch (vLLM sizes its own)."""
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
    return TransformersBackend(model, adapter=adapter, revision=revision, max_batch=max_batch)
