"""Cards of the RAG pipeline: the corpus and its index, the evaluation on the golden set."""

from .base import ArtifactCard, fmt


class CorpusCard(ArtifactCard):
    type = "llmops_corpus"
    title = "RAG corpus and index"
    artifacts = (
        "corpus_stats",
        "index_version",
        "corpus_version",
        "chroma_location",
        "embedding_model_id",
        "chunking",
        "embedded_chunks",
        "reused_from",
        "reused_chunks",
    )

    def components(self, task):
        from metaflow.cards import Markdown, Table

        stats = self.artifact(task, "corpus_stats") or {}
        counts = [
            ["files", stats.get("files")],
            ["chunks", stats.get("chunks")],
            ["characters", stats.get("characters")],
            ["tokens (embedding model)", stats.get("tokens")],
            ["chunks embedded in this run", self.artifact(task, "embedded_chunks")],
            [
                f"chunks reused from {self.artifact(task, 'reused_from') or '-'}",
                self.artifact(task, "reused_chunks"),
            ],
            *([f"files: {kind}", n] for kind, n in (stats.get("by_kind") or {}).items() if n),
        ]
        out = [
            Markdown(f"## Index `{self.artifact(task, 'index_version', '?')}`"),
            Markdown(
                f"Corpus `{self.artifact(task, 'corpus_version')}` "
                f"in `{self.artifact(task, 'chroma_location')}`; "
                f"embedding model `{self.artifact(task, 'embedding_model_id')}`; "
                f"chunking `{self.artifact(task, 'chunking')}`"
            ),
            Table(counts, headers=["", "count"]),
        ]
        skipped = stats.get("skipped") or []
        out.append(Markdown(f"### Skipped files ({len(skipped)})"))
        if skipped:
            out.append(Table([[s["path"], s["reason"]] for s in skipped], headers=["file", "why"]))
        return out


class RagEvalCard(ArtifactCard):
    type = "llmops_rag_eval"
    title = "RAG evaluation"
    artifacts = (
        "eval_scores",
        "index_version",
        "prompt_ref",
        "generator_settings",
        "generator_candidates",
        "generator_choice",
        "eval_notes",
        "eval_rows",
    )

    def components(self, task):
        from metaflow.cards import Markdown, Table

        scores = self.artifact(task, "eval_scores") or {}
        generator = (self.artifact(task, "generator_settings") or {}).get("backend", "?")
        out = [
            Markdown(
                f"## Index `{self.artifact(task, 'index_version', '?')}`, "
                f"prompt `{self.artifact(task, 'prompt_ref', '?')}`, generator `{generator}`"
            ),
            Table([[k, fmt(v)] for k, v in scores.items()], headers=["metric (mean)", "value"]),
        ]
        candidates = self.artifact(task, "generator_candidates") or []
        if candidates:  # every generator answered the same retrieved contexts
            metrics = list(candidates[0]["scores"])
            table = []
            for c in candidates:
                mark = " (chosen)" if c["chosen"] else " (stopped early)" if c.get("stopped") else ""
                name = c["name"] + mark
                table.append([name, c.get("answered", "?"), *(fmt(c["scores"].get(m)) for m in metrics)])
            stopped = "".join(f"\n- {c['stopped']}" for c in candidates if c.get("stopped"))
            out.append(
                Markdown("### Generator candidates\n" + self.artifact(task, "generator_choice", "") + stopped)
            )
            out.append(Table(table, headers=["generator", "answered", *metrics]))
        notes = self.artifact(task, "eval_notes") or []
        if notes:
            out.append(Markdown("### Not scored\n" + "\n".join(f"- {n}" for n in notes[:20])))
        rows = self.artifact(task, "eval_rows") or []
        if rows:
            metrics = list(rows[0]["scores"])
            table = [
                [r["question"], r["answer"][:200], ", ".join(r["sources"][:3])]
                + [fmt(r["scores"].get(m), ".2f") for m in metrics]
                for r in rows
            ]
            out.append(Markdown("### Per question"))
            out.append(Table(table, headers=["question", "answer", "sources", *metrics]))
        return out


class MonitorCard(ArtifactCard):
    type = "llmops_monitor"
    title = "Live monitor"
    artifacts = (
        "verdict",
        "monitored_release",
        "release_version",
        "window_since",
        "window_until",
        "score_reference",
        "feedback_ratings",
    )

    def components(self, task):
        from metaflow.cards import Markdown, Table

        from .base import figure
        from .figures import feedback_figure, question_map_figure, top_score_figure

        verdict = self.artifact(task, "verdict") or {}
        measures = {m["name"]: m for m in verdict.get("measures", [])}
        out = [
            Markdown(
                f"## `{self.artifact(task, 'monitored_release', '?')}` "
                f"`{self.artifact(task, 'release_version', '?')}`: "
                f"action **{verdict.get('action', '?')}**\n\n"
                f"Window {self.artifact(task, 'window_since') or 'beginning'} .. "
                f"{self.artifact(task, 'window_until')}: {verdict.get('requests', 0)} requests, "
                f"{verdict.get('ratings', 0)} ratings. {verdict.get('summary', '')}"
            ),
            Table(
                [
                    [m["name"], m["status"], fmt(m["value"]), fmt(m["limit"]), m["reason"]]
                    for m in measures.values()
                ],
                headers=["measure", "status", "value", "limit", "why"],
            ),
        ]
        drift = measures.get("question_drift", {}).get("details", {})
        if drift.get("map"):
            far = drift.get("furthest", [])
            out.append(Markdown("### Question drift map (reference blue, window red; furthest ringed)"))
            out.append(figure(question_map_figure(drift["map"], [f["index"] for f in far])))
            rows = [[f.get("question") or f"#{f['index']}", fmt(f["distance"], ".3f")] for f in far]
            out.append(Table(rows, headers=["furthest window questions", "distance"]))
        scores = measures.get("top_score_ks", {}).get("details", {})
        if scores.get("window"):
            out.append(
                Markdown(f"### Top retrieval scores: window against {self.artifact(task, 'score_reference')}")
            )
            out.append(figure(top_score_figure(scores.get("reference", []), scores["window"])))
        ratings = self.artifact(task, "feedback_ratings") or []
        if ratings:
            out.append(Markdown("### Feedback over time"))
            out.append(figure(feedback_figure(ratings)))
        return out
