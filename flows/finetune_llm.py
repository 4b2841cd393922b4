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
    resources,
    retry,
    step,
)

MAX_BUNDLED_BASE_MB = 512  # a local base model this small travels with the run (and the release)


class FinetuneLlmFlow(FlowSpec):
    policy = Config(
        "policy",
        default="evals/llm.yaml",
        parser="llmops.gates.parse_policy_config",
        help="Gate policy YAML: held-out thresholds, tuned vs base, regression vs the champion.",
    )
    training = Config(
        "training",
        default="configs/finetune.yaml",
        parser="llmops.llm.finetune.parse_training_config_for_metaflow",
        help="Training settings YAML: LoRA, optimizer, lengths, checkpoints, GPU step resources.",
    )
    base_model = Parameter(
        "base-model",
        default="tiny",
        help="A local model folder, a model-hub id (online machines), or 'tiny' (built locally).",
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
        from llmops.llm.checkpoints import checkpoint_key
        from llmops.llm.finetune import TrainingConfig, folder_size, read_folder, resolve_base_model
        from llmops.llm.sft_data import dataset_version, load_instructions, split_records
        from llmops.registry import check_name

        self.registry_name = check_name(self.release_name or self.policy.model, "--release-name")
        config = TrainingConfig.model_validate(dict(self.training))
        records = load_instructions(self.dataset)
        self.dataset_version = dataset_version(records)
        train, held_out = split_records(records, config.eval_fraction, config.seed)
        self.train_records = [r.model_dump() for r in train]
        self.eval_records = [r.model_dump() for r in held_out]
        base = resolve_base_model(self.base_model)
        self.base_model_ref = base.model_dump()
        self.base_model_files = None
        if base.local and folder_size(base.path) <= MAX_BUNDLED_BASE_MB * 2**20:
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

    @retry(times=2, minutes_between_retries=1)  # a retry continues from the last checkpoint
    @resources(
        cpu=config_expr("training.resources.cpu"),
        gpu=config_expr("training.resources.gpu"),
        memory=config_expr("training.resources.memory"),
    )
    @step
    def train(self):
        import tempfile
        from pathlib import Path

        from llmops.llm.checkpoints import CheckpointStore, default_root
        from llmops.llm.finetune import (
            TrainingConfig,
            fail_at_step_from_env,
            read_folder,
            train_lora,
        )
        from llmops.llm.sft_data import InstructionRecord

        workdir = Path(tempfile.mkdtemp(prefix="finetune-"))
        store = CheckpointStore(default_root(*self._datastore_location()))
        outcome = train_lora(
            self._base_path(workdir),
            [InstructionRecord(**r) for r in self.train_records],
            TrainingConfig.model_validate(dict(self.training)),
            workdir,
            store=store,
            key=self.checkpoint_key,
            fail_at_step=fail_at_step_from_env(current.retry_count),
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

        from llmops.llm.finetune import TrainingConfig, pick_device, write_folder
        from llmops.llm.lm_eval import compare, load_for_eval, score_model
        from llmops.llm.sft_data import InstructionRecord

        config = TrainingConfig.model_validate(dict(self.training))
        held_out = [InstructionRecord(**r) for r in self.eval_records]
        workdir = Path(tempfile.mkdtemp(prefix="evaluate-"))
        base_path = self._base_path(workdir)
        adapter_dir = write_folder(self.adapter_files, workdir / "adapter")
        device, dtype = pick_device()

        def score(model_path, adapter):
            model, tokenizer = load_for_eval(model_path, adapter, device, dtype)
            return score_model(model, tokenizer, held_out, max_length=config.max_length,
                               max_new_tokens=config.max_new_tokens,
                               max_generated=config.max_eval_examples)  # fmt: skip

        self.base_scores, base_samples = score(base_path, None)
        tuned_scores, tuned_samples = score(base_path, str(adapter_dir))
        self.eval_scores = compare(tuned_scores, self.base_scores)
        self.eval_samples = [
            {**t, "base_answer": b["answer"]} for t, b in zip(tuned_samples, base_samples, strict=True)
        ]
        self.champion_scored = self._score_champion(score)
        print(f"Base:  {self.base_scores}\nTuned: {self.eval_scores}")
        self.next(self.promote)

    @step
    def promote(self):
        import tempfile
        from pathlib import Path

        from llmops.llm.finetune import BaseModelRef, TrainingConfig, write_folder
        from llmops.llm.release import LlmRelease, merge_adapter, register_llm_release

        self.release_version, self.promoted = None, False
        if not self.gate_decision["passed"]:
            failed = [r["rule"] for r in self.gate_decision["rules"] if not r["passed"]]
            self.promotion_note = f"not promoted: gate failed on {', '.join(failed)}"
        else:
            workdir = Path(tempfile.mkdtemp(prefix="promote-"))
            base = BaseModelRef(**self.base_model_ref)
            base_path = self._base_path(workdir)
            adapter_dir = write_folder(self.adapter_files, workdir / "adapter")
            config = TrainingConfig.model_validate(dict(self.training))
            release = LlmRelease(
                base_model=base.spec,
                base_fingerprint=base.fingerprint,
                base_source=base.path,
                base_bundled=self.base_model_files is not None,
                merged=self.merge,
                lora=config.lora.model_dump(),
                training=config.model_dump(mode="json"),
                dataset_version=self.dataset_version,
                train_steps=self.training_report["steps"],
                device=self.training_report["device"],
                dtype=self.training_report["dtype"],
            )
            merged = merge_adapter(base_path, adapter_dir, workdir / "merged") if self.merge else None
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
        print(f"\n{self.registry_name}: {self.promotion_note}")
        trained = f"{report['steps']} steps on {report['device']} ({report['dtype']})"
        print(f"Dataset {self.dataset_version}; {trained}")
        print(f"Base:  {self.base_scores}")
        print(f"Tuned: {self.eval_scores}")
        print(
            f"Cards: python flows/finetune_llm.py card view evaluate --id eval|gate --run-id {current.run_id}"
        )
        if self.promoted:
            print(f"Model: llmops models show {self.registry_name}")
            print("Serve: bentoml serve services.llm:LLM --host 127.0.0.1 --port 3001")

    # ---- helpers (not steps) ---------------------------------------------------------------

    def _base_path(self, workdir):
        """The base model on this machine: the run's own copy when small, else where it was found."""
        from llmops.llm.finetune import BaseModelRef, folder_fingerprint, write_folder

        ref = BaseModelRef(**self.base_model_ref)
        if self.base_model_files is None:
            return ref.path
        folder = write_folder(self.base_model_files, workdir / "base")
        if folder_fingerprint(folder) != ref.fingerprint:
            raise ValueError(f"base model files do not match {ref.fingerprint}")
        return str(folder)

    def _datastore_location(self):
        """(type, root) of the datastore this task writes to: checkpoints go beside it."""
        storage = getattr(getattr(self, "_datastore", None), "_storage_impl", None)
        return getattr(storage, "TYPE", None), getattr(storage, "datastore_root", None)

    def _score_champion(self, score):
        """The champion on this run's held-out examples, when it can be loaded here."""
        from llmops.llm.lm_eval import compare
        from llmops.llm.release import served_model
        from llmops.registry import Registry

        champion = Registry().find(self.registry_name)
        if champion is None:
            return None
        try:
            served = served_model(champion)
            scores, _ = score(served.model, served.adapter)
        except (ValueError, OSError) as exc:
            print(f"Champion {champion.version} not scored here ({exc}); the gate uses its recorded metrics")
            return None
        return {"version": champion.version, "scores": compare(scores, self.base_scores)}


if __name__ == "__main__":
    FinetuneLlmFlow()
