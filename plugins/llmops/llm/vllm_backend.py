"""The vLLM backend (GPU; the ``[gpu]`` extra). Imported only when vLLM is installed and CUDA
is present, following BentoML's vLLM pattern: one engine per worker, sampling per request.
A LoRA adapter from flows/finetune_llm.py is served with vLLM's LoRA support: the engine loads
the base weights once and applies the adapter to every request (``LoRARequest``)."""

from __future__ import annotations

import importlib.util
import json
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
        out = self.llm.generate([prompt], self._sampling(params), use_tqdm=False, lora_request=self._lora)[0]
        choice = out.outputs[0]
        return Completion(
            text=choice.text,
            prompt_tokens=len(out.prompt_token_ids),
            completion_tokens=len(choice.token_ids),
            finish_reason="length" if choice.finish_reason == "length" else "stop",
        )

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[str | Completion]:
        # the offline LLM API yields whole outputs; the engine's step loop gives the deltas
        engine = self.llm.llm_engine
        request_id = uuid.uuid4().hex
        engine.add_request(request_id, prompt, self._sampling(params), lora_request=self._lora)
        sent = ""
        final = None
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.request_id != request_id:
                    continue
                text = out.outputs[0].text
                if len(text) > len(sent):
                    yield text[len(sent) :]
                    sent = text
                if out.finished:
                    final = out
        choice = final.outputs[0] if final else None
        yield Completion(
            text=sent,
            prompt_tokens=len(final.prompt_token_ids) if final else self.count_tokens(prompt),
            completion_tokens=len(choice.token_ids) if choice else 0,
            finish_reason="length" if choice and choice.finish_reason == "length" else "stop",
        )
