from metaflow.decorators import StepDecorator
from metaflow.exception import MetaflowException


class GateException(MetaflowException):
    headline = "@gate"


class GateDecorator(StepDecorator):
    """
    Decide, right after the step, whether its model may be promoted.

    The step computes the candidate's metrics; this decorator applies the gate policy
    (absolute thresholds, regression against the current champion, fairness across
    groups, training-data drift) and saves the decision as the artifact
    ``gate_decision`` (pass/fail and every rule with its measured value and limit), as
    the run tags ``gate:passed`` or ``gate:failed`` and ``model:<name>``, and in the task
    log. Render it with ``@card(type="llmops_gate")``. A later step promotes only if
    ``self.gate_decision["passed"]``.

    Parameters
    ----------
    policy : Union[str, Dict]
        The policy: a flow ``Config`` passed as ``config_expr("policy")`` (parse it with
        ``parser=gate_policy_parser``, from metaflow; the policy is then stored with the
        run and travels to remote steps), or a path to a policy YAML file.
    scores : str, default "eval_scores"
        Artifact with the candidate's metrics, a dict of metric name to float.
    group_scores : str, default "group_scores"
        Artifact with per-group metrics (dict group -> dict metric -> float); optional.
    group_sizes : str, default "group_sizes"
        Artifact with the row count per group; optional.
    champion_scored : str, default "champion_scored"
        Artifact ``{"version", "scores"}`` with the champion's metrics on this run's test
        set; used for the regression rule when it names the current champion, otherwise the
        champion's recorded metrics are used (and the decision says so).
    model : str, default "registry_name"
        Artifact with the registry name whose champion the candidate is compared with;
        when the step has no such artifact, the policy's ``model`` is used.
    drift : str, default "training_drift"
        Artifact with the training data's drift report against the champion's
        reference profile (``DriftReport.model_dump()``); optional. Handed to the policy's
        ``drift:`` section, which the tabular pipeline registers.
    online : str, default "online_evidence"
        Artifact with a challenger's shadow traffic paired with the champion's answers
        (``llmops.online_rules.ShadowEvidence`` dump); optional. Handed to the policy's
        ``online:`` section (flows/decide_challenger.py); without it no online rule applies.
    """

    name = "gate"
    defaults = {
        "policy": None,
        "scores": "eval_scores",
        "group_scores": "group_scores",
        "group_sizes": "group_sizes",
        "drift": "training_drift",
        "model": "registry_name",
        "champion_scored": "champion_scored",
        "online": "online_evidence",
    }

    def step_init(self, flow, graph, step_name, decorators, environment, flow_datastore, logger):
        if not self.attributes["policy"]:
            raise GateException(
                f'@gate on step *{step_name}* needs a policy: @gate(policy=config_expr("policy")) '
                'with a flow Config, or @gate(policy="evals/<model>.yaml").'
            )
        # Every process of a run (each task, each card) calls step_init. A Config policy was checked
        # once, when the run started, by its parser (gate_policy_parser, user_errors.py); only a file
        # path is read here, so that a missing or invalid file fails before any task runs.
        if isinstance(self.attributes["policy"], str):
            from llmops.gates import PolicyError

            try:
                self._load_policy(flow)
            except PolicyError as exc:
                raise GateException(f"@gate on step *{step_name}*: {exc}") from None

    def _load_policy(self, flow):
        from llmops.gates import PolicyError, load_policy, policy_from_config

        source = self.attributes["policy"]
        if isinstance(source, str):
            return load_policy(source)
        try:
            return policy_from_config(source)
        except ValueError as exc:
            raise PolicyError(f"policy Config: {exc}") from None

    def task_post_step(self, step_name, flow, graph, retry_count, max_user_code_retries):
        from llmops.errors import LlmopsError

        try:
            self._decide(step_name, flow)
        except LlmopsError as exc:  # shown as a headline: the step's own errors are (user_errors.py)
            raise GateException(f"@gate on step *{step_name}*: {exc}") from None

    def _decide(self, step_name, flow):
        from llmops.gates import evaluate_gate
        from llmops.registry import Registry

        from .run_tags import tag_current_run

        policy = self._load_policy(flow)
        scores = getattr(flow, self.attributes["scores"], None)
        if not isinstance(scores, dict):
            raise GateException(
                "@gate on step *{}*: the step must set self.{} to a dict of metric -> value".format(
                    step_name, self.attributes["scores"]
                )
            )
        registry_name = getattr(flow, self.attributes["model"], None) or policy.model
        champion = Registry().find(registry_name)
        drift = getattr(flow, self.attributes["drift"], None)
        champion_scores = champion.metadata.get("metrics") if champion else None
        scored = getattr(flow, self.attributes["champion_scored"], None)
        if champion and scored and scored.get("version") == champion.version:
            champion_scores = scored["scores"]
        elif champion:
            print("[gate] champion %s compared by its recorded metrics (other test set)" % champion.version)
        decision = evaluate_gate(
            policy.model_copy(update={"model": registry_name}),
            scores,
            champion_scores=champion_scores,
            champion_version=(champion.version if champion else None),
            group_scores=getattr(flow, self.attributes["group_scores"], None),
            group_sizes=getattr(flow, self.attributes["group_sizes"], None),
            # for the policy's own sections (llmops.gates): the classifier's drift:, the online: rules
            evidence={"drift": drift, "online": getattr(flow, self.attributes["online"], None)},
        )
        flow.gate_decision = decision.model_dump(mode="json")
        for rule in decision.rules:
            print(
                "[gate] %-4s %-28s value=%s limit=%s %s"
                % ("ok" if rule.passed else "FAIL", rule.rule, rule.value, rule.limit, rule.detail)
            )
        print("[gate] " + decision.summary())
        tag_current_run("gate:passed" if decision.passed else "gate:failed")
        tag_current_run(f"model:{registry_name}")  # a name's gate history is found by it (llmops.ui.runs)
