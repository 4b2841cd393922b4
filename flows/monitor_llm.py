"""Watch a served LLM release: its prompts, feedback, latency, errors and cut answers.

    python flows/monitor_llm.py run
    python flows/monitor_llm.py run --since 2026-11-01T00:00 --until 2026-11-02T00:00
    python flows/monitor_llm.py run --retrain true      # fine-tune a new release when it fails

start (window of the release's llm_request and feedback rows: by default from where the last
monitor run of this release stopped, until now) → measure (prompt drift against the fine-tune
dataset's held-out questions and the last passing window, negative feedback, latency and time to
first token, errors, answers cut by the length limit; the verdict; a card) → trigger (when the
policy's `retrain: true` or --retrain says so and the verdict asks for it: flows/finetune_llm.py on
the dataset plus the accepted corrections' fine-tune records, through the same @gate) → end.
Card: python flows/monitor_llm.py card view measure
"""

from metaflow import (
    Config,
    FlowSpec,
    Parameter,
    card,
    current,
    gate_policy_parser,
    package_sources,
    step,
    user_errors,
)

from llmops.packaging import CODE_PACKAGE_SUFFIXES, code_package_sources


@user_errors
@package_sources(code_package_sources(__file__), suffixes=CODE_PACKAGE_SUFFIXES)
class MonitorLlmFlow(FlowSpec):
    policy = Config(
        "policy",
        default="evals/llm.yaml",
        parser=gate_policy_parser,
        help="LLM policy YAML: its monitor: section (limits) and the gate of a new fine-tune.",
    )
    release_name = Parameter("release-name", default="", help="Registry name (default: the policy's).")
    since = Parameter("since", default="", help="Window start, ISO-8601 UTC (default: the last run's end).")
    until = Parameter("until", default="", help="Window end, ISO-8601 UTC (default: now).")
    log_dir = Parameter(
        "log-dir",
        default="",
        help="Inference log root (default: $LLMOPS_INFERENCE_LOG_DIR, else $LLMOPS_HOME/inference-log).",
    )
    dataset = Parameter(
        "dataset", default="", help="Fine-tune dataset (default: the release's, else the shipped one)."
    )
    golden_name = Parameter(
        "golden-name", default="rag_golden", help="Golden set whose accepted corrections join a retrain."
    )
    retrain = Parameter(
        "retrain", default=False, type=bool, help="Fine-tune when the verdict asks, whatever the policy."
    )

    @step
    def start(self):
        from datetime import datetime, timezone

        from llmops.gates import policy_from_config
        from llmops.live_measures import MonitorRules
        from llmops.llm.monitor import read_llm_window
        from llmops.registry import Registry, check_name
        from llmops.tabular.monitoring import parse_instant
        from metaflow_extensions.llmops.plugins.run_tags import tag_current_run

        self.monitored_release = check_name(self.release_name or self.policy.model, "--release-name")
        self.rules = policy_from_config(self.policy).monitor or MonitorRules()
        champion = Registry().get(self.monitored_release)
        tag_current_run(f"model:{self.monitored_release}")  # how the next monitor run finds this one
        self.release_version, self.lineage = champion.version, dict(champion.metadata)
        self.window_until = parse_instant(self.until, "--until") or datetime.now(timezone.utc).isoformat()
        previous = self._previous_run()
        self.previous_run = previous.pathspec if previous else None
        self.window_since = parse_instant(self.since, "--since") or (
            previous.data.window_until if previous else None
        )
        self.window = read_llm_window(
            self.log_dir or None, self.monitored_release, self.window_since, self.window_until
        )
        print(
            f"Window {self.window_since or 'beginning'} .. {self.window_until}: "
            f"{len(self.window.requests)} requests, {len(self.window.feedback)} ratings for "
            f"{self.monitored_release} (champion {champion.version})"
        )
        self.next(self.measure)

    def _previous_run(self):
        """The newest successful monitor run of this release (runs are tagged ``model:<name>``)."""
        from metaflow import Flow
        from metaflow.exception import MetaflowNotFound

        try:
            runs = Flow(current.flow_name).runs(f"model:{self.monitored_release}")
            return next((run for run in runs if run.successful), None)
        except MetaflowNotFound:
            return None

    def _training_run(self):
        """The fine-tune run the release came from (its lineage), if it can still be read."""
        from metaflow import Run
        from metaflow.exception import MetaflowNotFound

        try:
            return Run(self.lineage["run"], _namespace_check=False) if self.lineage.get("run") else None
        except MetaflowNotFound:
            return None

    @card(type="llmops_monitor")
    @step
    def measure(self):
        from metaflow import Run

        from llmops.llm.monitor import DEFAULT_DATASET, held_out_questions, measure_window, window_prompts
        from llmops.llm.sft_data import InstructionRecord
        from llmops.llm.training_config import TrainingConfig

        trained = self._training_run()
        data = trained.data if trained else None
        self.dataset_path = self.dataset or getattr(data, "dataset", None) or DEFAULT_DATASET
        if not self.dataset and getattr(data, "eval_records", None):  # the very split the gate saw
            reference = [InstructionRecord.model_validate(r).user_message() for r in data.eval_records]
        else:
            config = TrainingConfig()
            reference = held_out_questions(self.dataset_path, config.eval_fraction, config.seed)
        previous = Run(self.previous_run, _namespace_check=False).data if self.previous_run else None
        passing = list(getattr(previous, "passing_prompts", None) or [])
        prompts = window_prompts(self.window)
        verdict = measure_window(self.window, self.rules, self._prompt_drift(reference + passing, prompts))
        self.verdict = verdict.model_dump()
        passed = verdict.enough_traffic and verdict.action == "none"
        self.passing_prompts = prompts if passed else passing  # joins the next run's reference
        self.feedback_ratings = [f.model_dump() for f in self.window.feedback]
        print(f"Verdict: {verdict.summary}; action: {verdict.action}")
        for measure in verdict.measures:
            print(f"  {measure.name:18} {measure.status:12} {measure.reason}")
        self.next(self.trigger)

    def _prompt_drift(self, reference, prompts):
        from llmops.live_measures import not_applied

        name, limit = "prompt_drift", self.rules.question_alpha
        if not prompts:
            why = "prompts were not logged (text logging is off)" if self.window.requests else "no requests"
            return not_applied(name, limit, f"not measured: {why}")
        from llmops.rag.embeddings import Embedder
        from llmops.rag.monitor import measure_question_drift

        embedder = Embedder()  # the offline default: the LLM release has no embedding model of its own
        drift = measure_question_drift(
            embedder.embed(reference), embedder.embed(prompts), prompts, self.rules
        )
        reason = drift.reason.replace("questions", "prompts").replace("the reference's", "the held-out's")
        return drift.model_copy(update={"name": name, "reason": reason})

    @step
    def trigger(self):
        action, wanted = self.verdict["action"], self.rules.retrain or self.retrain
        self.retrain_run, self.retrain_outcome = None, "not needed"
        if action == "investigate":
            self.retrain_outcome = "the serving failed (latency or errors): a fine-tune would not help"
        elif action == "retrain" and not wanted:
            self.retrain_outcome = (
                f"retrain needed: would run flows/finetune_llm.py on {self.dataset_path} plus the "
                f"accepted corrections of {self.golden_name}; set monitor.retrain: true "
                "or pass --retrain true"
            )
        elif action == "retrain":
            self.retrain_outcome = self._retrain()
        print(f"Retrain: {self.retrain_outcome}")
        self.next(self.end)

    def _retrain(self):
        from pathlib import Path

        from metaflow import Runner

        from llmops import paths
        from llmops.llm.monitor import retrain_dataset
        from llmops.rag.monitor import RereleaseError

        corrections = paths.golden_dir() / self.golden_name / "finetune_records.jsonl"
        out = paths.retraining_dir() / self.monitored_release / f"{current.run_id}.jsonl"
        merged, added = retrain_dataset(self.dataset_path, corrections, out)
        print(f"Fine-tune dataset {merged}: {self.dataset_path} + {added} accepted corrections")
        options = {"dataset": str(merged), "release_name": self.monitored_release}
        trained = self._training_run()
        if trained is not None and getattr(trained.data, "base_model", None):
            options["base_model"] = trained.data.base_model
        flow = Path(__file__).resolve().parent / "finetune_llm.py"
        # the new release is gated by the policy the monitor judged with
        with Runner(str(flow), show_output=True, config_value=[("policy", self.policy)]).run(
            **options
        ) as run:
            self.retrain_run = run.run.pathspec if run.run else None
            if run.run is None or not run.run.successful:
                raise RereleaseError(f"the fine-tune run failed: {run.stderr[-2000:]}")
            return f"{run.run.pathspec}: {run.run['end'].task['promotion_note'].data}"

    @step
    def end(self):
        print(f"\n{self.monitored_release}: {self.verdict['summary']}; action: {self.verdict['action']}")
        print(f"Retrain: {self.retrain_outcome}")
        print(f"Card: python flows/monitor_llm.py card view measure --run-id {current.run_id}")


if __name__ == "__main__":
    MonitorLlmFlow()
