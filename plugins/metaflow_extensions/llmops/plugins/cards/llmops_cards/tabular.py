"""Cards of the tabular pipeline: the data profile, the classifier's evaluation, the drift monitor."""

from .base import ArtifactCard, figure, fmt


def drift_table(report):
    """One row per column: the test used, its value (p-value or distance) and threshold."""
    from metaflow.cards import Table

    rows = [
        [
            c["column"],
            c.get("statistic", ""),
            fmt(c["value"], ".4g") or "n/a",
            fmt(c["threshold"], ".4g") or "n/a",
            "DRIFT" if c["drifted"] else "",
            c.get("detail", ""),
        ]
        for c in report["columns"]
    ]
    return Table(rows, headers=["column", "test", "value", "threshold", "", "detail"])


class DataProfileCard(ArtifactCard):
    type = "llmops_data_profile"
    title = "Data profile"
    artifacts = ("dataset_version", "validation_report", "data_profile", "training_drift")

    def components(self, task):
        from metaflow.cards import Markdown, Table

        from llmops.tabular.profile import Profile

        from .figures import profile_figure

        out = [Markdown(f"## Dataset `{self.artifact(task, 'dataset_version', '?')}`")]
        report = self.artifact(task, "validation_report")
        if report:
            passed = all(c["passed"] for c in report["checks"])
            out.append(Markdown(f"### Validation: {'passed' if passed else 'FAILED'}"))
            rows = [c for c in report["checks"] if not c["passed"]] or report["checks"][:15]
            table = [
                [
                    c["rule"],
                    c["column"] or "",
                    str(c["value"]),
                    str(c["limit"]),
                    "ok" if c["passed"] else "FAIL",
                ]
                for c in rows
            ]
            out.append(Table(table, headers=["rule", "column", "value", "limit", "result"]))
        profile = self.artifact(task, "data_profile")
        if profile:
            profile = Profile.model_validate(profile)
            out.append(Markdown(f"### {profile.rows} rows, {len(profile.columns)} columns"))
            out.append(figure(profile_figure(profile)))
        drift = self.artifact(task, "training_drift")
        if drift:
            out.append(Markdown("### Drift against the champion's reference"))
            out.append(drift_table(drift))
        return out


class EvalCard(ArtifactCard):
    type = "llmops_eval"
    title = "Evaluation"
    artifacts = (
        "best_candidate",
        "eval_scores",
        "group_scores",
        "group_sizes",
        "confusion",
        "leaderboard",
        "selection_metric",
    )

    def components(self, task):
        from metaflow.cards import Markdown, Table

        from .figures import candidates_figure, confusion_figure

        out = [Markdown(f"## Best model: `{self.artifact(task, 'best_candidate', '?')}`")]
        scores = self.artifact(task, "eval_scores") or {}
        out.append(Table([[k, fmt(v)] for k, v in scores.items()], headers=["test metric", "value"]))
        groups = self.artifact(task, "group_scores")
        if groups:
            sizes = self.artifact(task, "group_sizes") or {}
            metrics = list(next(iter(groups.values())))
            rows = [[g, sizes.get(g, ""), *(fmt(groups[g][m]) for m in metrics)] for g in groups]
            out.append(Markdown("### Per group"))
            out.append(Table(rows, headers=["group", "rows", *metrics]))
        confusion = self.artifact(task, "confusion")
        if confusion:
            out.append(Markdown("### Confusion matrix (test set)"))
            out.append(figure(confusion_figure(confusion["matrix"], confusion["classes"])))
        leaderboard = self.artifact(task, "leaderboard")
        if leaderboard:
            metric = self.artifact(task, "selection_metric", "")
            out.append(Markdown(f"### Candidates (validation {metric})"))
            out.append(figure(candidates_figure(leaderboard, metric)))
        return out


class DriftCard(ArtifactCard):
    type = "llmops_drift"
    title = "Drift monitor"
    artifacts = (
        "monitored_model",
        "verdict",
        "window_since",
        "window_until",
        "window",
        "champion_version",
        "drift_report",
        "live_scores",
        "reference_profile",
    )

    def components(self, task):
        from metaflow.cards import Markdown, Table

        from llmops.tabular.profile import Profile

        from .figures import drift_figure

        since = self.artifact(task, "window_since") or "beginning"
        rows = len(self.artifact(task, "window", []))
        out = [
            Markdown(
                f"## {self.artifact(task, 'monitored_model', '?')}: {self.artifact(task, 'verdict', '')}"
            ),
            Markdown(
                f"Window `{since}` .. `{self.artifact(task, 'window_until')}`, {rows} rows; "
                f"champion `{self.artifact(task, 'champion_version')}`"
            ),
        ]
        report = self.artifact(task, "drift_report")
        if not report:
            return out
        out.append(drift_table(report))
        live = self.artifact(task, "live_scores")
        if live:
            out.append(Markdown("### Live metrics on labelled traffic"))
            out.append(Table([[k, v] for k, v in live.items()], headers=["metric", "value"]))
        drifted = {c["column"] for c in report["columns"] if c["drifted"]}
        shown = sorted(drifted) + [c["column"] for c in report["columns"] if c["column"] not in drifted]
        reference = Profile.model_validate(self.artifact(task, "reference_profile"))
        out.append(Markdown("### Reference vs current (drifted columns first)"))
        out.append(figure(drift_figure(reference, self.artifact(task, "window"), shown[:12], drifted)))
        return out
