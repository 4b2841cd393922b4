"""LoRA fine-tuning of a causal LM on instruction records, with checkpoints that survive a task.

    config = load_training_config("configs/finetune.yaml")   # llmops.llm.training_config
    base = resolve_base_model("smollm2-135m-instruct")   # llmops.llm.base_models
    outcome = train_lora(base.path, train_records, config, workdir,
                         store=CheckpointStore(default_root()), key=checkpoint_key({...}))

Training is transformers' ``Trainer`` over a ``peft`` LoRA model: on CUDA when present (bf16
where the device supports it, else fp32), else the CPU. The loss covers only the response
tokens: each example is the chat template's rendering of the user turn (masked) followed by the
assistant turn. ``Trainer`` writes ``checkpoint-<step>`` folders every ``save_steps``; each one is
copied to the :class:`~llmops.llm.checkpoints.CheckpointStore` as it is written, and a new
attempt starts from the newest one there (optimizer, scheduler and data order included).
Each step is a fault point (``finetune.step.<N>``, :mod:`llmops.faults`): a test makes an attempt
fail there on purpose, to exercise that recovery.
Examples are rendered by :mod:`llmops.llm.chat_format`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmops.faults import fault_point
from llmops.llm.chat_format import build_example, load_tokenizer
from llmops.llm.checkpoints import CheckpointStore
from llmops.llm.sft_data import InstructionRecord
from llmops.llm.training_config import TrainingConfig, TrainingConfigError


def pick_device() -> tuple[str, Literal["bfloat16", "float32"]]:
    """("cuda", "bfloat16") where the GPU supports bf16; ("cuda"|"cpu", "float32") otherwise."""
    import torch

    if torch.cuda.is_available():
        return "cuda", "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "cpu", "float32"


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


def check_lora_targets(model: Any, targets: str | list[str], base: str) -> None:
    """Each module ``lora.target_modules`` lists is in ``model`` (peft's own error names neither
    the option nor what would do); a string (``all-linear``, a regex) is peft's to match."""
    if isinstance(targets, str):
        return
    from torch.nn import Linear
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        layers = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, (Linear, Conv1D)) and name != "lm_head"})  # fmt: skip
        raise TrainingConfigError(
            f"lora.target_modules: {', '.join(missing)} not in {base}; its linear layers are "
            f"{', '.join(layers)} (or say all-linear)"
        )


def train_lora(
    base_path: str,
    records: list[InstructionRecord],
    config: TrainingConfig,
    workdir: Path,
    *,
    store: CheckpointStore | None = None,
    key: str | None = None,
    attempt: int = 0,
    revision: str | None = None,
) -> TrainOutcome:
    """Train a LoRA adapter; returns where it was saved (``workdir/adapter``) and how it went.
    ``attempt`` counts the step's retries (0 first), which the fault points are armed for."""
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    set_seed(config.seed)  # the adapter's initial weights too: one seed, one adapter
    device, dtype = pick_device()
    tokenizer = load_tokenizer(base_path, revision)
    model = load_causal_lm(base_path, device, dtype, revision)
    lora = config.lora
    check_lora_targets(model, lora.target_modules, base_path)
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
        callbacks=_callbacks(store, key, attempt),
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


def _callbacks(store: CheckpointStore | None, key: str | None, attempt: int) -> list[Any]:
    """Trainer callbacks: copy each checkpoint to the store (so another attempt can continue it)
    and a fault point after each step. Built here, not at import, so importing this module does not
    import transformers."""
    from transformers import TrainerCallback

    from llmops.progress import Progress

    class SyncCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                store.upload(key, state.global_step, folder)
                print(f"checkpoint step {state.global_step} saved to {store.root}/{key}", flush=True)

    class FaultPoints(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            fault_point(f"finetune.step.{state.global_step}", attempt=attempt)

    class StepProgress(TrainerCallback):
        """``trained step n/N (elapsed, rate, ETA); loss x`` every few seconds (llmops.progress)."""

        progress: Progress | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            # a resumed run counts on from its checkpoint; its rate and ETA from the steps it trains
            self.progress = Progress("trained step", state.max_steps, done=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            losses = [h["loss"] for h in state.log_history if "loss" in h]
            self.progress.update(state.global_step, f"loss {losses[-1]:.4f}" if losses else "")

    callbacks: list[Any] = [FaultPoints(), StepProgress()]
    if store is not None and key is not None:
        callbacks.append(SyncCheckpoints())
    return callbacks
