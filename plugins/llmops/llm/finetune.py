"""LoRA fine-tuning of a causal LM on instruction records, with checkpoints that survive a task.

    config = load_training_config("configs/finetune.yaml")
    base = resolve_base_model("smollm2-135m-instruct")   # llmops.llm.base_models
    outcome = train_lora(base.path, train_records, config, workdir,
                         store=CheckpointStore(default_root()), key=checkpoint_key({...}))

Training is transformers' ``Trainer`` over a ``peft`` LoRA model: on CUDA when present (bf16
where the device supports it, else fp32), else the CPU. The loss covers only the response
tokens: each example is the chat template's rendering of the user turn (masked) followed by the
assistant turn. ``Trainer`` writes ``checkpoint-<step>`` folders every ``save_steps``; each one is
copied to the :class:`~llmops.llm.checkpoints.CheckpointStore` as it is written, and a new
attempt starts from the newest one there (optimizer, scheduler and data order included).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmops.errors import LlmopsError, parse_yaml_model
from llmops.llm.base_models import BaseModelRef, folder_fingerprint, named_base_here
from llmops.llm.checkpoints import CheckpointStore
from llmops.llm.sft_data import InstructionRecord

FAIL_AT_STEP_ENV = "LLMOPS_FINETUNE_FAIL_AT_STEP"  # fault injection, to exercise recovery


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


# ---- the base model's files ------------------------------------------------------------


def materialize_base(ref: BaseModelRef, files: dict[str, bytes] | None, workdir: Path) -> str:
    """The base model on this machine: the run's own copy (checked against its fingerprint)
    when it travelled as an artifact; a named base built from its package here when this machine
    has not built it yet (a remote step); else the folder or hub id it was found at."""
    if files is None:
        if ref.package and not Path(ref.path).is_dir():
            return str(named_base_here(ref))
        return ref.path
    folder = write_folder(files, workdir / "base")
    if folder_fingerprint(folder) != ref.fingerprint:
        raise ValueError(f"base model files do not match {ref.fingerprint}")
    return str(folder)


def read_folder(folder: str | Path) -> dict[str, bytes]:
    """Every file of a folder (relative path → bytes): small models travel as artifacts."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def write_folder(files: dict[str, bytes], folder: str | Path) -> Path:
    """The inverse of :func:`read_folder`; refuses paths that would leave ``folder``."""
    folder = Path(folder).resolve()
    for relative, data in files.items():
        target = (folder / relative).resolve()
        if not target.is_relative_to(folder):
            raise ValueError(f"files: {relative!r} would be written outside {folder}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return folder


def folder_size(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


# ---- device and examples -------------------------------------------------------------------


def pick_device() -> tuple[str, Literal["bfloat16", "float32"]]:
    """("cuda", "bfloat16") where the GPU supports bf16; ("cuda"|"cpu", "float32") otherwise."""
    import torch

    if torch.cuda.is_available():
        return "cuda", "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "cpu", "float32"


def load_tokenizer(path: str, revision: str | None = None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    if tokenizer.pad_token_id is None:  # many causal LMs ship none: padding reuses the end token
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def render_prompt(tokenizer: Any, record: InstructionRecord) -> str:
    """The user turn, ready for the assistant's answer (the chat template, or a plain layout)."""
    messages = [{"role": "user", "content": record.user_message()}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"user: {record.user_message()}\nassistant:"


def render_target(tokenizer: Any, record: InstructionRecord) -> str:
    """What the model should write after :func:`render_prompt`: the answer and its end marker."""
    prompt = render_prompt(tokenizer, record)
    if getattr(tokenizer, "chat_template", None):
        messages = [
            {"role": "user", "content": record.user_message()},
            {"role": "assistant", "content": record.response},
        ]
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if full.startswith(prompt):
            return full[len(prompt) :]
    return f" {record.response}{tokenizer.eos_token or ''}"


def build_example(tokenizer: Any, record: InstructionRecord, max_length: int) -> dict[str, list[int]]:
    """input_ids and labels; the prompt's labels are -100 so only the answer is learned."""
    prompt = tokenizer(render_prompt(tokenizer, record), add_special_tokens=False)["input_ids"]
    target = tokenizer(render_target(tokenizer, record), add_special_tokens=False)["input_ids"]
    prompt = prompt[-max(1, max_length - len(target)) :]  # keep the end of a long prompt
    ids = (prompt + target)[:max_length]
    labels = ([-100] * len(prompt) + target)[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


# ---- training --------------------------------------------------------------------------------


@dataclass
class TrainOutcome:
    adapter_dir: Path
    steps: int
    resumed_from_step: int | None
    device: str
    dtype: str
    train_loss: float | None
    loss_history: list[dict[str, float]] = field(default_factory=list)  # [{"step", "loss"}]
    runtime_s: float = 0.0


def load_causal_lm(path: str, device: str, dtype: str, revision: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), revision=revision).to(
        device
    )


def train_lora(
    base_path: str,
    records: list[InstructionRecord],
    config: TrainingConfig,
    workdir: Path,
    *,
    store: CheckpointStore | None = None,
    key: str | None = None,
    fail_at_step: int | None = None,
    revision: str | None = None,
) -> TrainOutcome:
    """Train a LoRA adapter; returns where it was saved (``workdir/adapter``) and how it went."""
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    set_seed(config.seed)  # the adapter's initial weights too: one seed, one adapter
    device, dtype = pick_device()
    tokenizer = load_tokenizer(base_path, revision)
    model = load_causal_lm(base_path, device, dtype, revision)
    lora = config.lora
    model = get_peft_model(
        model,
        LoraConfig(task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                   target_modules=lora.target_modules),
    )  # fmt: skip
    trainable, total = model.get_nb_trainable_parameters()
    print(f"LoRA on {device} ({dtype}): {trainable:,} trainable of {total:,} parameters")

    resume_from, resumed_step = None, None
    if store is not None and key is not None and (resumed_step := store.latest(key)) is not None:
        resume_from = store.download(key, resumed_step, workdir / "resumed")
        print(f"Continuing from checkpoint step {resumed_step} ({store.root}/{key})")

    optim = config.optim
    args = TrainingArguments(
        output_dir=str(workdir / "checkpoints"),
        max_steps=optim.max_steps,
        per_device_train_batch_size=optim.batch_size,
        gradient_accumulation_steps=optim.gradient_accumulation_steps,
        learning_rate=optim.learning_rate,
        warmup_steps=optim.warmup_steps,
        weight_decay=optim.weight_decay,
        lr_scheduler_type="linear",
        logging_steps=max(1, min(10, config.save_steps)),
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        seed=config.seed,
        data_seed=config.seed,
        bf16=dtype == "bfloat16",
        use_cpu=device == "cpu",
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,  # Trainer prints each log line instead: readable in the task log
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=[build_example(tokenizer, r, config.max_length) for r in records],
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        callbacks=_callbacks(store, key, fail_at_step),
    )
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    adapter_dir = workdir / "adapter"
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)  # the served tokenizer (pad token and chat template)
    history = [
        {"step": int(h["step"]), "loss": float(h["loss"])} for h in trainer.state.log_history if "loss" in h
    ]
    train_loss = float(result.training_loss) if result.training_loss is not None else None
    if resumed_step is not None and resumed_step >= optim.max_steps and history:
        train_loss = history[-1]["loss"]  # nothing left to train: the finished run's last loss
    return TrainOutcome(
        adapter_dir=adapter_dir,
        steps=int(trainer.state.global_step),
        resumed_from_step=resumed_step,
        device=device,
        dtype=dtype,
        train_loss=train_loss,
        loss_history=history,
        runtime_s=float(result.metrics.get("train_runtime", 0.0)),
    )


class InjectedFailure(RuntimeError):
    """Raised on purpose by ``LLMOPS_FINETUNE_FAIL_AT_STEP``."""


def _callbacks(store: CheckpointStore | None, key: str | None, fail_at_step: int | None) -> list[Any]:
    """Trainer callbacks: copy each checkpoint to the store (so another attempt can continue it)
    and fail on purpose at a step. Built here, not at import, so importing this module does not
    import transformers."""
    from transformers import TrainerCallback

    class SyncCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                store.upload(key, state.global_step, folder)
                print(f"checkpoint step {state.global_step} saved to {store.root}/{key}", flush=True)

    class FailAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == fail_at_step:
                raise InjectedFailure(f"failure injected at step {fail_at_step} ({FAIL_AT_STEP_ENV})")

    callbacks: list[Any] = []
    if store is not None and key is not None:
        callbacks.append(SyncCheckpoints())
    if fail_at_step:
        callbacks.append(FailAt())
    return callbacks


def fail_at_step_from_env(attempt: int) -> int | None:
    """``LLMOPS_FINETUNE_FAIL_AT_STEP=N`` fails the first attempt at step N; ``N:all`` every attempt."""
    value = os.environ.get(FAIL_AT_STEP_ENV, "")
    if not value:
        return None
    step, _, scope = value.partition(":")
    if not step.isdigit() or scope not in ("", "all"):
        raise ValueError(f"{FAIL_AT_STEP_ENV}: expected N or N:all, got {value!r}")
    return int(step) if attempt == 0 or scope == "all" else None
