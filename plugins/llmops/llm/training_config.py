"""The fine-tuning config (``configs/finetune.yaml``): LoRA, optimizer, lengths, resources.

    config = load_training_config("configs/finetune.yaml")

Pydantic only: the flow's Metaflow ``Config`` parser (:func:`parse_training_config_for_metaflow`)
imports this module when the flow is parsed, so it must not import torch or transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmops.errors import LlmopsError, parse_yaml_model


class TrainingConfigError(LlmopsError, ValueError):
    """A training config that cannot be used; names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSettings(_Strict):
    r: int = Field(16, ge=1, le=1024)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"  # or module names, e.g. [q_proj, v_proj]


class OptimSettings(_Strict):
    learning_rate: float = Field(2e-4, gt=0, le=1)
    max_steps: int = Field(200, ge=1)
    batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)


class Resources(_Strict):
    """What the GPU steps ask of ``--with batch`` / ``--with kubernetes`` (ignored locally)."""

    cpu: int = Field(4, ge=1)
    gpu: int = Field(1, ge=0)
    memory: int = Field(32000, ge=512)  # MB, as @resources takes it


class TrainingConfig(_Strict):
    lora: LoraSettings = Field(default_factory=LoraSettings)
    optim: OptimSettings = Field(default_factory=OptimSettings)
    max_length: int = Field(512, ge=16)  # tokens per example (prompt + response), longer ones cut
    eval_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    save_steps: int = Field(50, ge=1)
    max_new_tokens: int = Field(64, ge=1)  # generated per held-out example for the task metrics
    max_eval_examples: int = Field(200, ge=1)  # held-out examples generated for (loss uses all)
    # times a failed train task is tried again, each from the newest checkpoint (Metaflow's @retry;
    # it allows at most 4)
    retries: int = Field(2, ge=0, le=4)
    resources: Resources = Field(default_factory=Resources)

    def decides_training(self) -> dict[str, Any]:
        """What changes the trained weights: these settings and the training libraries' versions
        (resources and evaluation settings don't)."""
        from importlib.metadata import version

        libraries = {name: version(name) for name in ("torch", "transformers", "peft")}
        return self.model_dump(include={"lora", "optim", "max_length", "seed"}) | {"libraries": libraries}


def parse_training_config(text: str, source: str = "training config") -> TrainingConfig:
    return parse_yaml_model(text, TrainingConfig, source, TrainingConfigError)


def parse_training_config_for_metaflow(text: str) -> dict[str, Any]:
    """Parser for a Metaflow ``Config``: validates, then hands Metaflow a plain dict."""
    return parse_training_config(text).model_dump(mode="json")


def load_training_config(path: str | Path) -> TrainingConfig:
    path = Path(path)
    if not path.is_file():
        raise TrainingConfigError(f"training config not found: {path}")
    return parse_training_config(path.read_text(), str(path))
