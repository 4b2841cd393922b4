"""Watch a served RAG release: its questions, retrieval, answers, feedback, latency and corpus.

    python flows/monitor_rag.py run
    python flows/monitor_rag.py run --since 2026-11-01T00:00 --until 2026-11-02T00:00
    python flows/monitor_rag.py run --rerelease true --docs docs      # re-release when it fails
    python flows/monitor_rag.py run --judge-url http://127.0.0.1:3001/v1 --judge-model llm

start (window of the release's inference log: by default from where the last monitor run of this
release stopped, until now) → measure (question drift against the golden and last passing
questions, top-score KS test against the release's evaluation, low-confidence share, groundedness
(with a judge, ragas faithfulness of a sample too), negative feedback, latency and errors, the docs
folder against the index; the verdict; a card) → trigger (when the policy's `retrain: true` or
--rerelease says so and the verdict asks for it: flows/build_rag_index.py when the corpus changed,
then flows/evaluate_rag.py with the current golden set, through the same @gate; the champion moves
only if it passes) → end.
Card: python flows/monitor_rag.py card view measure
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
class MonitorRagFlow(FlowSpec):
    policy = Config(
        "policy",
        default="evals/rag.yaml",
        parser=gate_policy_parser,
        help="RAG policy YAML: its monitor: section (limits) and the gate of a re-release.",
    )
    release_name = Parameter("release-name", default="", help="Registry name (default: the policy's).")
    since = Parameter("since", default="", help="Window start, ISO-8601 UTC (default: the last run's end).")
    until = Parameter("until", default="", help="Window end, ISO-8601 UTC (default: now).")
    log_dir = Parameter(
        "log-dir",
        default="",
        help="Inference log root (default: $LLMOPS_INFERENCE_LOG_DIR, else $LLMOPS_HOME/inference-log).",
    )
    golden = Parameter("golden", default="", help="Golden set YAML (default: the release evaluation's).")
    docs = Parameter("docs", default="", help="Docs folder (default: the one the index was built from).")
    rerelease = Parameter("rerelease", default=False, type=bool, help="Re-release when the verdict asks.")
    generators = Parameter("generators", default="", help="--generators of the re-release's evaluation.")
    judge_url = Parameter("judge-url", default="", help="OpenAI-compatible URL of an LLM judge (optional).")
    judge_model = Parameter("judge-model", default="", help="The judge's model name.")
    judge_sample = Parameter("judge-sample", default=20, type=int, help="Answers of the window judged.")

    @step
    def start(self):
        from datetime import datetime, timezone

        from llmops.gates import policy_from_config
        from llmops.rag.monitor import MonitorRules
        from llmops.rag.monitor_sources import judge_from_options, read_window
        from llmops.registry import Registry, check_name
        from llmops.tabular.monitoring import parse_instant
        from metaflow_extensions.llmops.plugins.run_tags import tag_current_run

        self.monitored_release = check_name(self.release_name or self.policy.model, "--release-name")
        self.rules = policy_from_config(self.policy).monitor or MonitorRules()
        self.judge = judge_from_options(self.judge_url, self.judge_model, self.judge_sample)
        champion = Registry().get(self.monitored_release)
        tag_current_run(f"model:{self.monitored_release}")  # how the next monitor run finds this one
        self.release_version, self.lineage = champion.version, dict(champion.metadata)
        self.window_until = parse_instant(self.until, "--until") or datetime.now(timezone.utc).isoformat()
        previous = self._previous_run()
        self.previous_run = previous.pathspec if previous else None
        last_end = previous.data.window_until if previous else None
        self.window_since = parse_instant(self.since, "--since") or last_end
        self.window = read_window(
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

    @card(type="llmops_monitor")
    @step
    def measure(self):
        from metaflow import Run

        from llmops.rag.evaluation import load_golden
        from llmops.rag.monitor_sources import golden_candidates, measure_window
        from llmops.rag.release import load_release, open_pipeline
        from llmops.registry import Registry

        release, prompt = load_release(Registry().get(self.monitored_release, self.release_version))
        pipeline = open_pipeline(
            release.chroma, release.index.version, prompt, "extractive", retrieval=release.retrieval
        )
        evaluation = self._evaluation_run()
        self.golden_path = self.golden or (evaluation.data.golden if evaluation else "evals/rag_golden.yaml")
        golden = [item.question for item in load_golden(self.golden_path, "--golden").questions]
        previous = Run(self.previous_run, _namespace_check=False).data if self.previous_run else None
        if evaluation is not None:  # the top scores the gate saw
            reference_scores = [
                hits[0]["score"] for hits in evaluation["start"].task["contexts"].data if hits
            ]
            self.score_reference = f"evaluation run {evaluation.pathspec}"
        else:
            hits = pipeline.retriever.retrieve_many(golden, release.k)
            reference_scores = [h[0].score for h in hits if h]
            self.score_reference = f"the golden set retrieved now ({self.golden_path})"
        self.docs_folder = self.docs or self._built_from(evaluation)
        verdict = measure_window(
            self.window,
            self.rules,
            embedder=pipeline.retriever.embedder,
            collection=pipeline.retriever.collection,
            reference_questions=golden + list(getattr(previous, "passing_questions", None) or []),
            reference_scores=reference_scores,
            docs=self.docs_folder,
            judge=self.judge,
            judge_sample=self.judge_sample,
        )
        self.verdict = verdict.model_dump()
        # the last window that passed is part of the next run's reference: this one, or the one before
        asked = [r.question for r in self.window.requests if r.question]
        passed = verdict.enough_traffic and verdict.action == "none"
        self.passing_questions = asked if passed else list(getattr(previous, "passing_questions", None) or [])
        self.feedback_ratings = [f.model_dump() for f in self.window.feedback]
        self.golden_candidates = golden_candidates(self.window, self.rules, golden)
        print(f"Verdict: {verdict.summary}; action: {verdict.action}")
        for measure in verdict.measures:
            print(f"  {measure.name:19} {measure.status:12} {measure.reason}")
        self.next(self.trigger)

    def _evaluation_run(self):
        from metaflow import Run
        from metaflow.exception import MetaflowNotFound

        try:
            return Run(self.lineage["run"], _namespace_check=False) if self.lineage.get("run") else None
        except MetaflowNotFound:
            return None

    def _built_from(self, evaluation):
        """The --docs of the index flow run that built the release's index, else docs/."""
        from pathlib import Path

        from metaflow import Flow
        from metaflow.exception import MetaflowNotFound

        index = evaluation.data.index_version if evaluation else None
        try:
            for run in list(Flow("BuildRagIndexFlow").runs())[:50]:  # newest first
                if run.successful and index and run.data.index_version == index:
                    return str(Path(run.data.docs).resolve())
        except MetaflowNotFound:
            pass
        return "docs"

    @step
    def trigger(self):
        action, wanted = self.verdict["action"], self.rules.retrain or self.rerelease
        self.rerelease_runs, self.rerelease_outcome = [], "not needed"
        if action != "none" and not wanted:
            self.rerelease_outcome = f"{action} needed: set monitor.retrain: true or pass --rerelease true"
        elif action != "none":
            self.rerelease_outcome = self._rerelease(action)
        print(f"Re-release: {self.rerelease_outcome}")
        self.next(self.end)

    def _rerelease(self, action):
        from pathlib import Path

        from metaflow import Runner

        from llmops.rag.monitor_sources import rerelease_options
        from llmops.rag.release import load_release
        from llmops.registry import Registry

        release, _ = load_release(Registry().get(self.monitored_release, self.release_version))
        index, evaluate = rerelease_options(
            release, self.monitored_release, self.docs_folder, self.golden_path, self.generators
        )
        flows = Path(__file__).resolve().parent
        if action == "reindex-and-evaluate":
            with Runner(str(flows / "build_rag_index.py"), show_output=True).run(**index) as running:
                evaluate["index"] = self._finished(running)["end"].task["index_version"].data
        # the re-release is gated by the policy the monitor judged with
        runner = Runner(
            str(flows / "evaluate_rag.py"), show_output=True, config_value=[("policy", self.policy)]
        )
        with runner.run(**evaluate) as running:
            run = self._finished(running)
            return f"{run.pathspec}: {run['end'].task['promotion_note'].data}"

    def _finished(self, running):
        from llmops.rag.monitor import RereleaseError

        self.rerelease_runs.append(running.run.pathspec if running.run else None)
        if running.run is None or not running.run.successful:
            raise RereleaseError(f"the re-release run failed: {running.stderr[-2000:]}")
        return running.run

    @step
    def end(self):
        print(f"\n{self.monitored_release}: {self.verdict['summary']}; action: {self.verdict['action']}")
        print(f"Re-release: {self.rerelease_outcome}")
        print(f"Card: python flows/monitor_rag.py card view measure --run-id {current.run_id}")


if __name__ == "__main__":
    MonitorRagFlow()
