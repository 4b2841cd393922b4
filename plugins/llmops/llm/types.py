"""What every LLM backend shares: the interface, its request and answer types, its error.

Kept apart from the backends so that each backend module (transformers, vLLM, the batching engine)
imports these without importing the others."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

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
    seed: int | None = None  # 0 <= seed < 2**64; the same seed draws the same tokens


class Backend(Protocol):
    name: str
    model_path: str
    adapter_path: str | None
    max_context: int

    def render(self, messages: list[dict[str, str]]) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def complete(self, prompt: str, params: SamplingParams) -> Completion: ...

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[str | Completion]: ...
