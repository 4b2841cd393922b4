"""The gate decision card: every rule with its measured value, limit and result."""

from .base import ArtifactCard, figure


class GateCard(ArtifactCard):
    type = "llmops_gate"
    title = "Gate decision"
    artifacts = ("gate_decision",)

    def components(self, task):
        from metaflow.cards import Markdown, Table

        from .figures import gate_figure

        decision = self.artifact(task, "gate_decision")
        if not decision:
            return [Markdown(f"No `{self._names['gate_decision']}` artifact: is `@gate` on this step?")]
        verdict = "PASSED" if decision["passed"] else "FAILED"
        champion = decision.get("champion_version") or "none"
        rows = [
            [
                r["rule"],
                "" if r["value"] is None else r["value"],
                "" if r["limit"] is None else r["limit"],
                ("ok" if r.get("applied", True) else "not applied") if r["passed"] else "FAIL",
                r["detail"],
            ]
            for r in decision["rules"]
        ]
        out = [
            Markdown(f"## Gate {verdict} for `{decision['model']}`"),
            Markdown(f"Policy `{decision['policy_version']}`; champion at gate time: `{champion}`"),
            Table(rows, headers=["rule", "measured", "limit", "result", "detail"]),
        ]
        if any(r["value"] is not None for r in decision["rules"]):
            out.append(figure(gate_figure(decision["rules"])))
        return out
