"""Watch the served model: drift of live traffic, live performance, and retraining when needed.

    python flows/monitor_drift.py run
    python flows/monitor_drift.py run --feedback labels.csv            # labels by request_id,row
    python flows/monitor_drift.py run --since 2026-11-01T00:00 --until 2026-11-02T00:00 --retrain false

start (window of the inference log: by default from where the last monitor run of this model
stopped, until now) → detect (drift of the window against the champion's reference profile;
live metrics when --feedback labels are given; a drift card) → retrain_model (when the policy says
so: runs flows/train_classifier.py on the champion's training data plus the labelled window,
through the same gate; the champion moves only if it passes) → end.

Locally the retraining run is started with metaflow.Runner. On Argo Workflows, the monitor
publishes an event only when it decides to retrain and the training flow is deployed with
@trigger(event=...) on it (see README: @trigger_on_finish would retrain after every run).
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
class MonitorDriftFlow(FlowSpec):
    policy = Config(
        "policy",
        default="evals/classifier.yaml",
        parser=gate_policy_parser,
        help="Policy YAML: drift test and limits, metric minimums (live and for the gate).",
    )
    model_name = Parameter("model-name", default="", help="Registry name (default: the policy's model).")
    since = Parameter(
        "since",
        default="",
        help="Window start, ISO-8601 UTC (default: the end of the last monitor run's window).",
    )
    until = Parameter("until", default="", help="Window end, ISO-8601 UTC (default: now).")
    log_dir = Parameter(
        "log-dir",
        default="",
        help="Inference log root (default: $LLMOPS_INFERENCE_LOG_DIR, else $LLMOPS_HOME/inference-log).",
    )
    feedback = Parameter(
        "feedback", default="", help="CSV/Parquet of labels: request_id, row and the target column; optional."
    )
    retrain = Parameter(
        "retrain",
        default=True,
        type=bool,
        help="Start the training flow when drift or live metrics cross the policy.",
    )
    retrain_data = Parameter(
        "retrain-data",
        default="",
        help="Labelled data to retrain on (default: champion's data + labelled window).",
    )
    retrain_models = Parameter(
        "retrain-models",
        default="",
        help="Candidate families for the retraining run (default: the training flow's).",
    )
    min_rows = Parameter(
        "min-rows", default=50, type=int, help="Fewer logged rows than this in the window: no verdict."
    )

    @step
    def start(self):
        from datetime import datetime, timezone

        from llmops.inference_log import CHAMPION_ROLE, read_log
        from llmops.registry import Registry, check_name
        from llmops.tabular.monitoring import parse_instant
        from metaflow_extensions.llmops.plugins.run_tags import tag_current_run

        self.monitored_model = check_name(self.model_name or self.policy.model, "--model-name")
        champion = Registry().get(self.monitored_model)
        tag_current_run(f"model:{self.monitored_model}")  # how the next monitor run finds this one
        self.champion_version = champion.version
        self.window_until = parse_instant(self.until, "--until") or datetime.now(timezone.utc).isoformat()
        self.window_since = parse_instant(self.since, "--since") or self._last_window_end()
        # the champion's rows: a shadow challenger's answers to the same requests are not traffic
        window = read_log(self.log_dir or None, self.monitored_model, self.window_since, self.window_until,
                          roles=[CHAMPION_ROLE])  # fmt: skip
        self.window = window
        print(
            f"Window {self.window_since or 'beginning'} .. {self.window_until}: {len(window)} rows logged "
            f"for {self.monitored_model}; champion {champion.version}"
        )
        self.next(self.detect)

    def _last_window_end(self):
        """Where the newest successful monitor run of this model ended its window. Runs are tagged
        ``model:<name>``, so only this model's runs are read; runs from before the tag are read
        (newest first) only when no tagged run has succeeded yet."""
        from metaflow import Flow
        from metaflow.exception import MetaflowNotFound

        try:
            flow = Flow(current.flow_name)
            for run in flow.runs(f"model:{self.monitored_model}"):
                if run.successful:
                    return run.data.window_until
            for run in flow.runs():
                if run.successful and run.data.monitored_model == self.monitored_model:
                    return run.data.window_until
        except MetaflowNotFound:
            pass
        return None

    @card(type="llmops_drift")
    @step
    def detect(self):
        from llmops.gates import policy_from_config
        from llmops.registry import Registry
        from llmops.tabular.data import TableSchema
        from llmops.tabular.drift import detect_drift
        from llmops.tabular.monitoring import decide_retrain, join_feedback, live_metrics, load_feedback
        from llmops.tabular.profile import Profile

        policy = policy_from_config(self.policy)
        champion = Registry().get(self.monitored_model, self.champion_version)
        schema = TableSchema.model_validate(champion.read_json("schema.json"))
        self.schema = schema.model_dump()
        self.reference_profile = champion.read_json("reference_profile.json")
        self.drift_report, self.live_scores, self.labelled = None, None, None
        if len(self.window) < self.min_rows:
            self.verdict = f"not enough traffic: {len(self.window)} rows < --min-rows {self.min_rows}"
            self.decision = {"retrain": False, "reasons": []}
        else:
            current_features = self.window.reindex(columns=list(schema.features))
            report = detect_drift(
                Profile.model_validate(self.reference_profile), current_features, policy.drift
            )
            self.drift_report = report.model_dump()
            if self.feedback:
                labelled = join_feedback(self.window, load_feedback(self.feedback, schema.target))
                self.labelled = labelled  # every labelled row is training data for a retrain
                # live performance is the champion's own: rows answered by older versions are left out
                own = labelled[labelled["model_version"] == self.champion_version]
                if len(own):
                    self.live_scores = live_metrics(own, schema)
            decision = decide_retrain(policy, report, self.live_scores)
            self.decision = decision.model_dump()
            self.verdict = "; ".join(decision.reasons) or "no drift, live metrics within the policy"
            print(
                f"Drifted columns: {report.drifted_columns or 'none'} "
                f"({report.drifted_share:.0%} of {len(report.columns)})"
            )
            if self.live_scores:
                print(f"Live metrics on {len(self.labelled)} labelled rows: {self.live_scores}")
        print(f"Verdict: {self.verdict}")
        self.next(self.retrain_model)

    @step
    def retrain_model(self):
        self.retrain_run, self.retrain_outcome = None, "not needed"
        if self.decision["retrain"] and not self.retrain:
            self.retrain_outcome = "needed, but --retrain false was given"
        elif self.decision["retrain"]:
            data_path = self.retrain_data or self._write_retraining_set()
            if data_path:
                self.retrain_run, self.retrain_outcome = self._run_training(data_path)
        print(f"Retraining: {self.retrain_outcome}")
        self.next(self.end)

    def _write_retraining_set(self):
        from metaflow import Run

        from llmops.paths import retraining_dir
        from llmops.registry import Registry
        from llmops.tabular.data import TableSchema
        from llmops.tabular.monitoring import retraining_set

        if self.labelled is None or not len(self.labelled):
            self.retrain_outcome = "needed, but there are no labels: pass --feedback or --retrain-data"
            return ""
        lineage = Registry().get(self.monitored_model, self.champion_version).metadata
        training = Run(lineage["run"], _namespace_check=False)["start"].task["dataset"].data
        combined = retraining_set(training, self.labelled, TableSchema(**self.schema))
        path = retraining_dir() / f"{self.monitored_model}-{current.run_id}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        combined.to_parquet(path, index=False)
        print(
            f"Retraining set: {len(training)} champion training rows + {len(self.labelled)} labelled "
            f"production rows -> {path}"
        )
        return str(path)

    def _run_training(self, data_path):
        from pathlib import Path

        from metaflow import Runner

        from llmops.tabular.data import DataError

        flow_file = Path(__file__).resolve().parent / "train_classifier.py"
        options = {"data": data_path, "model_name": self.monitored_model, "target": self.schema["target"]}
        if self.retrain_models:
            options["models"] = self.retrain_models
        # the retraining run is gated by the same policy the monitor judged with
        runner = Runner(str(flow_file), show_output=True, config_value=[("policy", self.policy)])
        with runner.run(**options) as running:
            run = running.run
            if run is None or not run.successful:
                raise DataError(f"the retraining run failed: {running.stderr[-2000:]}")
            promoted = run["end"].task["promoted"].data
            note = run["end"].task["promotion_note"].data
        return run.pathspec, f"{run.pathspec}: {note}" if note else f"{run.pathspec}: promoted={promoted}"

    @step
    def end(self):
        print(f"\n{self.monitored_model}: {len(self.window)} rows in the window; {self.verdict}")
        print(f"Retraining: {self.retrain_outcome}")
        print("Drift card: python flows/monitor_drift.py card view detect")


if __name__ == "__main__":
    MonitorDriftFlow()
