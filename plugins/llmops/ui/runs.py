"""What the UI reads from Metaflow: gated runs and their decisions, monitor runs, cards.

Every run this project's flows make is found by its tags (``llmops.ui`` keeps no index of its own):
``@gate`` tags a gated run ``gate:passed`` or ``gate:failed`` and ``model:<registry name>``, and
each monitor run is tagged ``model:<name>`` of the release it watched. A page reads only the runs it
shows: the tags select them, and a page of decisions loads one small artifact per run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

from llmops.errors import LlmopsError

PASSED, FAILED = "gate:passed", "gate:failed"
MONITOR_FLOWS = {"MonitorDriftFlow": "tabular", "MonitorRagFlow": "rag", "MonitorLlmFlow": "llm"}
GATE_CARD = "llmops_gate"
CARDS_PER_STEP = 3  # tasks of one step whose cards are listed (a foreach may have many)
KEPT_DECISIONS = 20_000  # decisions of finished runs kept in memory (a few KB each)


class NotFound(LlmopsError, LookupError):
    """A model, version, run, step or card that is not there; the message names it."""


@cache
def _client() -> Any:
    """The Metaflow client, reading every user's runs (the UI is not one user's view)."""
    import metaflow

    metaflow.namespace(None)
    return metaflow


def _flows() -> list[Any]:
    from metaflow.exception import MetaflowException

    try:
        return list(_client().Metaflow())
    except MetaflowException:  # no datastore yet: no runs
        return []


def _tagged(flow: Any, *tags: str) -> list[Any]:
    from metaflow.exception import MetaflowException

    try:
        return list(flow.runs(*tags))
    except MetaflowException:
        return []


@dataclass
class GateRun:
    pathspec: str
    created_at: datetime
    passed: bool
    decision: dict[str, Any] | None = None  # None: the run has no decision artifact (it failed before)

    @property
    def failed_rules(self) -> list[dict[str, Any]]:
        return [r for r in (self.decision or {}).get("rules", []) if not r["passed"]]


@dataclass
class GatePage:
    name: str
    status: str | None  # "passed", "failed" or None (both)
    runs: list[GateRun]
    total: int
    page: int
    per_page: int
    counts: dict[str, int] = field(default_factory=dict)  # passed / failed, over every page

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


_decisions: dict[str, dict[str, Any]] = {}  # of finished runs: a finished run's artifacts never change
_lock = threading.Lock()


def gate_decision(run: Any) -> dict[str, Any] | None:
    """The ``gate_decision`` artifact of a run: on its end task (artifacts flow on), else on the
    step that made it (a run that stopped before its end)."""
    with _lock:
        if run.pathspec in _decisions:
            return _decisions[run.pathspec]
    end = run.end_task
    if end is not None and "gate_decision" in end:
        decision = end["gate_decision"].data
        with _lock:
            if len(_decisions) < KEPT_DECISIONS:
                _decisions[run.pathspec] = decision
        return decision
    for step in run:
        task = step.task
        if task is not None and "gate_decision" in task:
            return task["gate_decision"].data
    return None


def gate_page(name: str, status: str | None = None, page: int = 1, per_page: int = 25) -> GatePage:
    """The gated runs of ``name``, newest first, one page of them with their decisions."""
    # one read of the name's runs per flow (the local metadata reads every run's tags for a filter)
    gated = [r for f in _flows() if f.id not in MONITOR_FLOWS for r in _tagged(f, f"model:{name}")]
    passed = [r for r in gated if PASSED in r.tags]
    failed = [r for r in gated if FAILED in r.tags]
    chosen = {"passed": passed, "failed": failed}.get(status or "", passed + failed)
    chosen.sort(key=lambda r: r.created_at, reverse=True)
    page = max(1, page)
    shown = chosen[(page - 1) * per_page : page * per_page]
    failed_ids = {r.pathspec for r in failed}
    runs = [GateRun(r.pathspec, r.created_at, r.pathspec not in failed_ids, gate_decision(r)) for r in shown]
    return GatePage(
        name, status, runs, len(chosen), page, per_page, {"passed": len(passed), "failed": len(failed)}
    )


def gated_names() -> list[str]:
    """Every registry name with a gated run (a failed gate registers nothing, so some have no version)."""
    names = set()
    for flow in _flows():
        if flow.id in MONITOR_FLOWS:
            continue
        for found in _tagged(flow):
            tags = found.tags
            if PASSED in tags or FAILED in tags:
                names |= {t.removeprefix("model:") for t in tags if t.startswith("model:")}
    return sorted(names)


def run(pathspec: str) -> Any:
    """A run by ``Flow/run_id``; :class:`NotFound` naming it otherwise."""
    from metaflow.exception import MetaflowException

    try:
        return _client().Run(pathspec)
    except (MetaflowException, ValueError):
        raise NotFound(
            f"run {pathspec!r} not found (no such flow or run in this Metaflow datastore)"
        ) from None


@dataclass
class CardRef:
    task: str  # Flow/run/step/task
    index: int  # its position among the task's cards
    type: str
    id: str | None

    @property
    def url(self) -> str:
        return f"/cards/{self.task}?i={self.index}"


def run_cards(found: Any) -> list[CardRef]:
    """The cards of a run, step by step (the first tasks of each step)."""
    from metaflow.cards import get_cards
    from metaflow.exception import MetaflowException

    refs = []
    for step in found:
        for n, task in enumerate(step):
            if n >= CARDS_PER_STEP:
                break
            try:
                cards = list(get_cards(task))
            except MetaflowException:  # a task that records no datastore (not made by a flow run)
                continue
            refs += [CardRef(task.pathspec, i, card.type, card.id) for i, card in enumerate(cards)]
    return refs


def card_html(task_pathspec: str, index: int) -> tuple[str, str]:
    """(title, HTML) of the ``index``-th card of a task; :class:`NotFound` naming what is missing."""
    from metaflow.cards import get_cards
    from metaflow.exception import MetaflowException

    try:
        task = _client().Task(task_pathspec)
        cards = list(get_cards(task))
    except (MetaflowException, ValueError):
        raise NotFound(f"task {task_pathspec!r} not found (give Flow/run/step/task)") from None
    if not 0 <= index < len(cards):
        raise NotFound(f"task {task_pathspec!r} has no card #{index} ({len(cards)} cards)")
    card = cards[index]
    return f"{card.type}{f' ({card.id})' if card.id else ''}", card.get()


def monitor_runs(name: str, limit: int = 40) -> list[tuple[str, Any]]:
    """(pipeline, run) of the newest ``limit`` monitor runs of ``name``, oldest first."""
    found = []
    for flow in _flows():
        if flow.id in MONITOR_FLOWS:
            found += [(MONITOR_FLOWS[flow.id], r) for r in _tagged(flow, f"model:{name}")]
    found.sort(key=lambda pr: pr[1].created_at, reverse=True)
    return list(reversed(found[:limit]))


def monitored_names() -> dict[str, int]:
    """Every name a monitor run watched, with its number of monitor runs."""
    counts: dict[str, int] = {}
    for flow in _flows():
        if flow.id not in MONITOR_FLOWS:
            continue
        for found in _tagged(flow):
            for tag in found.tags:
                if tag.startswith("model:"):
                    counts[tag.removeprefix("model:")] = counts.get(tag.removeprefix("model:"), 0) + 1
    return dict(sorted(counts.items()))
