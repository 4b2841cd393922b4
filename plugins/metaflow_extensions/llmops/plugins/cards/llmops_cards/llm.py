"""The LLM fine-tune card: base, tuned and champion side by side on the held-out examples."""

from .base import ArtifactCard, figure, fmt


class LlmEvalCard(ArtifactCard):
    type = "llmops_llm_eval"
    title = "LLM fine-tune evaluation"
    artifacts = (
        "base_model_ref",
        "training_report",
        "dataset_version",
        "eval_records",
        "base_scores",
        "eval_scores",
        "champion_scored",
        "eval_samples",
    )

    def components(self, task):
        from metaflow.cards import Markdown, Table

        from .figures import loss_figure

        base = self.artifact(task, "base_model_ref") or {}
        report = self.artifact(task, "training_report") or {}
        resumed = (
            f", continued from step {report['resumed_from_step']}" if report.get("resumed_from_step") else ""
        )
        held_out = len(self.artifact(task, "eval_records", []))
        out = [
            Markdown(
                f"## Base `{base.get('spec', '?')}`, dataset `{self.artifact(task, 'dataset_version', '?')}`"
            ),
            Markdown(
                f"{report.get('steps')} steps on {report.get('device')} ({report.get('dtype')}), "
                f"attempt {report.get('attempt')}{resumed}; {held_out} held-out examples"
            ),
        ]
        base_scores = self.artifact(task, "base_scores") or {}
        tuned = self.artifact(task, "eval_scores") or {}
        champion = self.artifact(task, "champion_scored") or {}
        columns = ["base", "tuned"] + ([f"champion {champion['version']}"] if champion else [])
        rows = [
            [metric, fmt(base_scores.get(metric)), fmt(tuned[metric])]
            + ([fmt(champion["scores"].get(metric))] if champion else [])
            for metric in tuned
        ]
        out.append(Table(rows, headers=["held-out metric", *columns]))
        if report.get("loss_history"):
            out.append(figure(loss_figure(report["loss_history"], report.get("resumed_from_step"))))
        samples = self.artifact(task, "eval_samples") or []
        if samples:
            table = [
                [s["prompt"][:160], s["reference"][:160], s["base_answer"][:160], s["answer"][:160]]
                for s in samples[:15]
            ]
            out.append(Markdown("### Held-out examples"))
            out.append(Table(table, headers=["instruction", "reference", "base", "tuned"]))
        return out
