"""A served model's monitor history: each monitor run as points on a time line, and its charts.

One shape for the three monitors (flows/monitor_drift.py, monitor_rag.py, monitor_llm.py): a point
per measure per run (its value, its limit, passed / failed / not applied), the feedback share, the
drifted columns (tabular) or the questions furthest from the reference (RAG, LLM), and the events a
run started (a retraining or a re-release). Everything is read from the runs' end tasks, where the
flows' artifacts arrive; a finished run is read once per process (its artifacts never change).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from llmops.ui.charts import drifted_columns_chart, measures_chart

NOT_STARTED = ("not needed", "")
LABELLED = "labelled_rows"  # live_scores' count of labelled rows (llmops.tabular.monitoring.live_metrics)


@dataclass
class MonitorRun:
    pathspec: str
    pipeline: str  # tabular, rag, llm
    at: str  # the window's end (ISO-8601)
    verdict: str
    action: str
    points: list[dict[str, Any]] = field(default_factory=list)
    drifted: list[str] = field(default_factory=list)  # columns, or the questions furthest away
    event: str | None = None  # what it started: a retraining, a re-release


@dataclass
class MonitorHistory:
    name: str
    runs: list[MonitorRun]

    @property
    def points(self) -> list[dict[str, Any]]:
        return [p for r in self.runs for p in r.points]

    @property
    def events(self) -> list[MonitorRun]:
        return [r for r in self.runs if r.event]

    def charts(self) -> dict[str, dict[str, Any]]:
        charts = {}
        if self.points:
            charts["measures"] = measures_chart(self.points)
        cells = [
            {"at": r.at, "column": c, "run": r.pathspec}
            for r in self.runs
            if r.pipeline == "tabular"
            for c in r.drifted
        ]
        if cells:
            charts["drifted"] = drifted_columns_chart(cells)
        return charts


def _get(task: Any, name: str, default: Any = None) -> Any:
    return task[name].data if name in task else default


def _point(run: str, at: str, measure: str, value: Any, limit: Any, status: str) -> dict[str, Any]:
    return {"run": run, "at": at, "measure": measure, "value": value, "limit": limit, "status": status}


def _tabular(run: Any, end: Any) -> MonitorRun:
    at = _get(end, "window_until", "")
    report = _get(end, "drift_report")
    verdict = _get(end, "verdict", "")
    found = MonitorRun(run.pathspec, "tabular", at, verdict, "retrain" if _decision(end) else "none")
    if report is None:
        found.points.append(_point(run.pathspec, at, "drifted share", None, None, "not applied"))
    else:
        found.drifted = [c["column"] for c in report["columns"] if c["drifted"]]
        status = "failed" if report.get("dataset_drifted") else "passed"
        found.points.append(
            _point(
                run.pathspec,
                at,
                "drifted share",
                report["drifted_share"],
                report.get("max_drifted_share"),
                status,
            )
        )
    reasons = " ".join((_get(end, "decision") or {}).get("reasons", []))
    live = dict(_get(end, "live_scores") or {})
    labelled = live.pop(LABELLED, None)  # a count, not a score: the feedback share's numerator
    for metric, value in live.items():
        status = "failed" if f"live {metric} " in reasons else "passed"
        found.points.append(_point(run.pathspec, at, f"live {metric}", value, None, status))
    if labelled is not None:
        rows = len(_get(end, "window", []))  # the window's rows (a small frame; the page reads no other)
        share = labelled / rows if rows else None
        found.points.append(_point(run.pathspec, at, "feedback share", share, None, "passed"))
    outcome = _get(end, "retrain_outcome", "")
    found.event = None if outcome in NOT_STARTED else f"retraining: {outcome}"
    return found


def _decision(end: Any) -> bool:
    return bool((_get(end, "decision") or {}).get("retrain"))


def _live(run: Any, end: Any, pipeline: str) -> MonitorRun:
    """A RAG or LLM monitor run: its verdict's measures (llmops.live_measures.Verdict)."""
    at = _get(end, "window_until", "")
    verdict = _get(end, "verdict") or {}
    found = MonitorRun(run.pathspec, pipeline, at, verdict.get("summary", ""), verdict.get("action", "?"))
    for m in verdict.get("measures", []):
        found.points.append(_point(run.pathspec, at, m["name"], m["value"], m["limit"], m["status"]))
        if m["name"] in ("question_drift", "prompt_drift"):
            far = (m.get("details") or {}).get("furthest", [])
            found.drifted = [f.get("question") or f"#{f.get('index')}" for f in far]
    if verdict.get("requests"):
        share = verdict.get("ratings", 0) / verdict["requests"]
        found.points.append(_point(run.pathspec, at, "feedback share", share, None, "passed"))
    outcome = _get(end, "rerelease_outcome" if pipeline == "rag" else "retrain_outcome", "")
    if outcome not in NOT_STARTED:
        found.event = f"{'re-release' if pipeline == 'rag' else 'retraining'}: {outcome}"
    return found


# a finished run's artifacts never change: each is read once per process (at most this many kept)
_finished: OrderedDict[str, MonitorRun] = OrderedDict()
_lock = threading.Lock()
KEPT_RUNS = 5000


def _read(pipeline: str, run: Any) -> MonitorRun | None:
    with _lock:
        if run.pathspec in _finished:
            return _finished[run.pathspec]
    end = run.end_task
    if end is None or "window_until" not in end:  # still running, or failed before its end
        return None
    found = _tabular(run, end) if pipeline == "tabular" else _live(run, end, pipeline)
    with _lock:
        _finished[run.pathspec] = found
        while len(_finished) > KEPT_RUNS:
            _finished.popitem(last=False)
    return found


def monitor_history(name: str, limit: int = 40) -> MonitorHistory:
    """The newest ``limit`` finished monitor runs of ``name``, oldest first."""
    from llmops.ui.runs import monitor_runs

    runs = [found for pipeline, run in monitor_runs(name, limit) if (found := _read(pipeline, run))]
    return MonitorHistory(name, runs)
