"""Card types of the llmops extension: data profile, evaluation, gate decision, drift, RAG corpus,
RAG evaluation and LLM fine-tune evaluation.

Each renders from the task's artifacts, so a card can be re-rendered later with
``python flows/<flow>.py card view <step>`` or ``card create``.
"""

from metaflow.plugins.cards.card_modules.basic import BlankCard


def _figure(fig):
    import matplotlib.pyplot as plt
    from metaflow.cards import Image

    image = Image.from_matplotlib(fig)
    plt.close(fig)
    return image


def _artifact(task, name, default=None):
    return task[name].data if name in task else default


def _drift_table(report):
    """One row per column: the test used, its value (p-value or distance) and threshold."""
    from metaflow.cards import Table

    def fmt(value):
        return "n/a" if value is None else "%.4g" % value

    rows = [
        [
            c["column"],
            c.get("statistic", ""),
            fmt(c["value"]),
            fmt(c["threshold"]),
            "DRIFT" if c["drifted"] else "",
            c.get("detail", ""),
        ]
        for c in report["columns"]
    ]
    return Table(rows, headers=["column", "test", "value", "threshold", "", "detail"])


class _ArtifactCard(BlankCard):
    """A blank card whose components are built from the task's artifacts."""

    title = ""

    def __init__(self, options=None, components=None, graph=None, **kwargs):
        super().__init__(options={"title": self.title}, components=[], graph=graph, **kwargs)

    def render(self, task, components=None, runtime=False):
        return super().render(task, components=self.components(task), runtime=runtime)

    def components(self, task):
        raise NotImplementedError


class DataProfileCard(_ArtifactCard):
    type = "llmops_data_profile"
    title = "Data profile"

    def components(self, task):
        from metaflow.cards import Markdown, Table

        from llmops.plots import profile_figure
        from llmops.profile import Profile

        out = [Markdown("## Dataset `{}`".format(_artifact(task, "dataset_version", "?")))]
        report = _artifact(task, "validation_report")
        if report:
            out.append(
                Markdown(
                    "### Validation: %s"
                    % ("passed" if all(c["passed"] for c in report["checks"]) else "FAILED")
                )
            )
            failed = [c for c in report["checks"] if not c["passed"]]
            rows = failed or report["checks"][:15]
            out.append(
                Table(
                    [
                        [
                            c["rule"],
                            c["column"] or "",
                            str(c["value"]),
                            str(c["limit"]),
                            "ok" if c["passed"] else "FAIL",
                        ]
                        for c in rows
                    ],
                    headers=["rule", "column", "value", "limit", "result"],
                )
            )
        profile = _artifact(task, "data_profile")
        if profile:
            profile = Profile.model_validate(profile)
            out.append(Markdown("### %d rows, %d columns" % (profile.rows, len(profile.columns))))
            out.append(_figure(profile_figure(profile)))
        drift = _artifact(task, "training_drift")
        if drift:
            out.append(Markdown("### Drift against the champion's reference"))
            out.append(_drift_table(drift))
        return out


class EvalCard(_ArtifactCard):
    type = "llmops_eval"
    title = "Evaluation"

    def components(self, task):
        from metaflow.cards import Markdown, Table

        from llmops.plots import candidates_figure, confusion_figure

        out = [Markdown("## Best model: `{}`".format(_artifact(task, "best_candidate", "?")))]
        scores = _artifact(task, "eval_scores") or {}
        out.append(Table([[k, f"{v:.4f}"] for k, v in scores.items()], headers=["test metric", "value"]))
        groups = _artifact(task, "group_scores")
        if groups:
            sizes = _artifact(task, "group_sizes") or {}
            metrics = list(next(iter(groups.values())))
            out.append(Markdown("### Per group"))
            out.append(
                Table(
                    [[g, sizes.get(g, "")] + [f"{groups[g][m]:.4f}" for m in metrics] for g in groups],
                    headers=["group", "rows", *metrics],
                )
            )
        confusion = _artifact(task, "confusion")
        if confusion:
            out.append(Markdown("### Confusion matrix (test set)"))
            out.append(_figure(confusion_figure(confusion["matrix"], confusion["classes"])))
        leaderboard = _artifact(task, "leaderboard")
        if leaderboard:
            out.append(
                Markdown("### Candidates (validation {})".format(_artifact(task, "selection_metric", "")))
            )
            out.append(_figure(candidates_figure(leaderboard, _artifact(task, "selection_metric", ""))))
        return out


class GateCard(_ArtifactCard):
    type = "llmops_gate"
    title = "Gate decision"

    def components(self, task):
        from metaflow.cards import Markdown, Table

        from llmops.plots import gate_figure

        decision = _artifact(task, "gate_decision")
        if not decision:
            return [Markdown("No `gate_decision` artifact: is `@gate` on this step?")]
        verdict = "PASSED" if decision["passed"] else "FAILED"
        out = [
            Markdown("## Gate {} for `{}`".format(verdict, decision["model"])),
            Markdown(
                "Policy `{}`; champion at gate time: `{}`".format(
                    decision["policy_version"], decision.get("champion_version") or "none"
                )
            ),
            Table(
                [
                    [
                        r["rule"],
                        "" if r["value"] is None else r["value"],
                        "" if r["limit"] is None else r["limit"],
                        "ok" if r["passed"] else "FAIL",
                        r["detail"],
                    ]
                    for r in decision["rules"]
                ],
                headers=["rule", "measured", "limit", "result", "detail"],
            ),
        ]
        if any(r["value"] is not None for r in decision["rules"]):
            out.append(_figure(gate_figure(decision["rules"])))
        return out


class DriftCard(_ArtifactCard):
    type = "llmops_drift"
    title = "Drift monitor"

    def components(self, task):
        from metaflow.cards import Markdown, Table

        from llmops.plots import drift_figure
        from llmops.profile import Profile

        out = [
            Markdown("## %s: %s" % (_artifact(task, "monitored_model", "?"), _artifact(task, "verdict", "")))
        ]
        out.append(
            Markdown(
                "Window `%s` .. `%s`, %d rows; champion `%s`"
                % (
                    _artifact(task, "window_since") or "beginning",
                    _artifact(task, "window_until"),
                    len(_artifact(task, "window", [])),
                    _artifact(task, "champion_version"),
                )
            )
        )
        report = _artifact(task, "drift_report")
        if not report:
            return out
        out.append(_drift_table(report))
        live = _artifact(task, "live_scores")
        if live:
            out.append(Markdown("### Live metrics on labelled traffic"))
            out.append(Table([[k, v] for k, v in live.items()], headers=["metric", "value"]))
        drifted = {c["column"] for c in report["columns"] if c["drifted"]}
        shown = sorted(drifted) + [c["column"] for c in report["columns"] if c["column"] not in drifted]
        out.append(Markdown("### Reference vs current (drifted columns first)"))
        out.append(
            _figure(
                drift_figure(
                    Profile.model_validate(_artifact(task, "reference_profile")),
                    _artifact(task, "window"),
                    shown[:12],
                    drifted,
                )
            )
        )
        return out


class CorpusCard(_ArtifactCard):
    type = "llmops_corpus"
    title = "RAG corpus and index"

    def components(self, task):
        from metaflow.cards import Markdown, Table

        stats = _artifact(task, "corpus_stats") or {}
        out = [
            Markdown("## Index `%s`" % _artifact(task, "index_version", "?")),
            Markdown(
                "Corpus `%s` in `%s`; embedding model `%s`; chunking `%s`"
                % (
                    _artifact(task, "corpus_version"),
                    _artifact(task, "chroma_location"),
                    _artifact(task, "embedding_model_id"),
                    _artifact(task, "chunking"),
                )
            ),
            Table(
                [
                    ["files", stats.get("files")],
                    ["chunks", stats.get("chunks")],
                    ["characters", stats.get("characters")],
                    ["tokens (embedding model)", stats.get("tokens")],
                    ["chunks embedded in this run", _artifact(task, "embedded_chunks")],
                    [
                        "chunks reused from " + str(_artifact(task, "reused_from") or "-"),
                        _artifact(task, "reused_chunks"),
                    ],
                ]
                + [["files: " + kind, n] for kind, n in (stats.get("by_kind") or {}).items() if n],
                headers=["", "count"],
            ),
        ]
        skipped = stats.get("skipped") or []
        out.append(Markdown("### Skipped files (%d)" % len(skipped)))
        if skipped:
            out.append(Table([[s["path"], s["reason"]] for s in skipped], headers=["file", "why"]))
        return out


class RagEvalCard(_ArtifactCard):
    type = "llmops_rag_eval"
    title = "RAG evaluation"

    def components(self, task):
        from metaflow.cards import Markdown, Table

        scores = _artifact(task, "eval_scores") or {}
        out = [
            Markdown(
                "## Index `%s`, prompt `%s`, generator `%s`"
                % (
                    _artifact(task, "index_version", "?"),
                    _artifact(task, "prompt_ref", "?"),
                    (_artifact(task, "generator_settings") or {}).get("backend", "?"),
                )
            ),
            Table([[k, "%.4f" % v] for k, v in scores.items()], headers=["metric (mean)", "value"]),
        ]
        candidates = _artifact(task, "generator_candidates") or []
        if candidates:  # every generator answered the same retrieved contexts
            metrics = list(candidates[0]["scores"])
            out.append(Markdown("### Generator candidates\n" + _artifact(task, "generator_choice", "")))
            out.append(
                Table(
                    [
                        [c["name"] + (" (chosen)" if c["chosen"] else "")]
                        + ["%.4f" % c["scores"][m] if m in c["scores"] else "" for m in metrics]
                        for c in candidates
                    ],
                    headers=["generator", *metrics],
                )
            )
        notes = _artifact(task, "eval_notes") or []
        if notes:
            out.append(Markdown("### Not scored\n" + "\n".join("- " + n for n in notes[:20])))
        rows = _artifact(task, "eval_rows") or []
        if rows:
            metrics = [m for m in rows[0]["scores"]]
            out.append(Markdown("### Per question"))
            out.append(
                Table(
                    [
                        [r["question"], r["answer"][:200], ", ".join(r["sources"][:3])]
                        + ["" if r["scores"].get(m) is None else "%.2f" % r["scores"][m] for m in metrics]
                        for r in rows
                    ],
                    headers=["question", "answer", "sources", *metrics],
                )
            )
        return out


class LlmEvalCard(_ArtifactCard):
    type = "llmops_llm_eval"
    title = "LLM fine-tune evaluation"

    def components(self, task):
        from metaflow.cards import Markdown, Table

        from llmops.plots import loss_figure

        base = _artifact(task, "base_model_ref") or {}
        report = _artifact(task, "training_report") or {}
        out = [
            Markdown(
                "## Base `%s`, dataset `%s`"
                % (base.get("spec", "?"), _artifact(task, "dataset_version", "?"))
            ),
            Markdown(
                "%s steps on %s (%s), attempt %s%s; %d held-out examples"
                % (
                    report.get("steps"),
                    report.get("device"),
                    report.get("dtype"),
                    report.get("attempt"),
                    ", continued from step %s" % report["resumed_from_step"]
                    if report.get("resumed_from_step")
                    else "",
                    len(_artifact(task, "eval_records", [])),
                )
            ),
        ]
        base_scores = _artifact(task, "base_scores") or {}
        tuned = _artifact(task, "eval_scores") or {}
        champion = _artifact(task, "champion_scored") or {}
        columns = ["base", "tuned"] + (["champion %s" % champion["version"]] if champion else [])
        rows = []
        for metric in tuned:
            values = [base_scores.get(metric), tuned[metric]] + (
                [champion["scores"].get(metric)] if champion else []
            )
            rows.append([metric] + ["" if v is None else "%.4f" % v for v in values])
        out.append(Table(rows, headers=["held-out metric", *columns]))
        if report.get("loss_history"):
            out.append(_figure(loss_figure(report["loss_history"], report.get("resumed_from_step"))))
        samples = _artifact(task, "eval_samples") or []
        if samples:
            out.append(Markdown("### Held-out examples"))
            out.append(
                Table(
                    [
                        [s["prompt"][:160], s["reference"][:160], s["base_answer"][:160], s["answer"][:160]]
                        for s in samples[:15]
                    ],
                    headers=["instruction", "reference", "base", "tuned"],
                )
            )
        return out


CARDS = [DataProfileCard, EvalCard, GateCard, DriftCard, CorpusCard, RagEvalCard, LlmEvalCard]
