"""Decide on a challenger from its shadow traffic: it becomes the champion when the gate passes.

    python flows/decide_challenger.py run                                  # evals/rag.yaml, release rag
    python flows/decide_challenger.py --config policy evals/llm.yaml run --since 2026-12-01T00:00
    python flows/decide_challenger.py --config policy evals/classifier.yaml run --feedback labels.csv
    llmops models decide rag                                               # the same, from the CLI

start (the champion, the version under the `challenger` alias, the window of the inference log:
from when that alias was set until now by default; each champion row paired with the challenger's
shadow row of the same request; @gate: the policy's metric and regression rules on the
challenger's recorded scores, its online: rules on the pairs) → end (a pass moves `champion` to the
challenger, compare-and-set against the champion the gate saw, a fail moves nothing; every rule
with its value and limit).
Card: python flows/decide_challenger.py card view start --id gate
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
    step,
    user_errors,
)

from llmops.packaging import CODE_PACKAGE_SUFFIXES, code_package_sources


@user_errors
@package_sources(code_package_sources(__file__), suffixes=CODE_PACKAGE_SUFFIXES)
class DecideChallengerFlow(FlowSpec):
    policy = Config(
        "policy",
        default="evals/rag.yaml",
        parser=gate_policy_parser,
        help="Policy YAML with an online: section (and the metric rules the challenger's scores meet).",
    )
    release_name = Parameter("release-name", default="", help="Registry name (default: the policy's).")
    since = Parameter(
        "since", default="", help="Window start, ISO-8601 UTC (default: when the challenger alias was set)."
    )
    until = Parameter("until", default="", help="Window end, ISO-8601 UTC (default: now).")
    log_dir = Parameter(
        "log-dir",
        default="",
        help="Inference log root (default: $LLMOPS_INFERENCE_LOG_DIR, else $LLMOPS_HOME/inference-log).",
    )
    feedback = Parameter(
        "feedback",
        default="",
        help="Classifier: labels of logged rows (CSV or Parquet: request_id, row, label), for accuracy.",
    )

    @card(type="llmops_gate", id="gate")
    @gate(policy=config_expr("policy"))
    @step
    def start(self):
        from datetime import datetime, timezone

        from llmops.gates import PolicyError, policy_from_config
        from llmops.online_rules import CHALLENGER, read_shadow_evidence
        from llmops.registry import Registry, RegistryError, check_name
        from llmops.tabular.monitoring import parse_instant

        self.registry_name = check_name(self.release_name or self.policy.model, "--release-name")
        if policy_from_config(self.policy).online is None:
            raise PolicyError(
                f"policy {self.policy.model!r}: no online: section, so nothing would judge the shadow "
                f"traffic; add one (docs/monitoring.md, Online gate)"
            )
        registry = Registry()
        champion = registry.get(self.registry_name)
        challenger = registry.find(self.registry_name, CHALLENGER)
        if challenger is None:
            raise RegistryError(
                f"{self.registry_name!r} has no {CHALLENGER}: point the alias at a version first "
                f"(llmops models promote {self.registry_name}:VERSION --alias {CHALLENGER})"
            )
        if challenger.version == champion.version:
            raise RegistryError(f"{self.registry_name}@{CHALLENGER} is the champion: nothing to decide")
        self.champion_version, self.challenger_version = champion.version, challenger.version
        self.window_since = parse_instant(self.since, "--since") or self._alias_set(registry)
        self.window_until = parse_instant(self.until, "--until") or datetime.now(timezone.utc).isoformat()
        evidence = read_shadow_evidence(
            self.log_dir or None,
            self.registry_name,
            self.champion_version,
            self.challenger_version,
            self.window_since,
            self.window_until,
            labels=self._labels(),
        )
        if evidence.kind == "rag_request":  # each answer against its own release's index
            from llmops.rag.shadow_grounding import add_groundedness

            evidence, scored = add_groundedness(evidence, self.registry_name)
            print(f"Groundedness: {scored}")
        self.online_evidence = evidence.model_dump()  # @gate hands it to the online: rules
        self.eval_scores = dict(challenger.metadata.get("metrics") or {})  # what its own gate measured
        print(f"Window {self.window_since or 'beginning'} .. {self.window_until}: {evidence.describe()}")
        self.next(self.end)

    def _alias_set(self, registry):
        """When ``challenger`` was last pointed at the version under it (None: read the whole log)."""
        from llmops.online_rules import CHALLENGER

        moves = [
            e["at"]
            for e in registry.history(self.registry_name)
            if e["alias"] == CHALLENGER and e["version"] == self.challenger_version
        ]
        return moves[-1] if moves else None

    def _labels(self):
        """``request_id/row`` -> label from --feedback (the drift monitor's label file)."""
        from llmops.online_rules import label_key
        from llmops.tabular.monitoring import load_feedback

        if not self.feedback:
            return {}
        frame = load_feedback(self.feedback, "label")
        keys = zip(frame["request_id"], frame["row"], strict=True)
        return {label_key(r, n): label for (r, n), label in zip(keys, frame["label"], strict=True)}

    @step
    def end(self):
        from llmops.promotion import promote_challenger

        # a resumed run whose earlier attempt moved the alias finds it moved and says so
        self.promoted, self.promotion_note = promote_challenger(
            self.registry_name, self.challenger_version, self.gate_decision
        )
        verdict = "PASSED" if self.gate_decision["passed"] else "FAILED"
        print(f"\nOnline gate {verdict} for {self.registry_name}:{self.challenger_version} "
              f"against champion {self.champion_version}")  # fmt: skip
        for rule in self.gate_decision["rules"]:
            result = ("ok" if rule.get("applied", True) else "not applied") if rule["passed"] else "FAIL"
            shown = {k: "n/a" if rule[k] is None else f"{rule[k]:.4g}" for k in ("value", "limit")}
            print(f"  {result:11} {rule['rule']:32} value={shown['value']:8} limit={shown['limit']:8} "
                  f"{rule['detail']}")  # fmt: skip
        print(f"{self.registry_name}: {self.promotion_note}")
        print(f"Card: python flows/decide_challenger.py card view start --id gate --run-id {current.run_id}")


if __name__ == "__main__":
    DecideChallengerFlow()
