"""Fault points: named places where a test makes the process fail on purpose, to show that a
failure there loses nothing (a resumed run finishes its promotion, a retried training step
continues from its checkpoint) or harms nothing (a shadow challenger that fails or stalls never
touches the champion's answers).

    fault_point("promote.after_register", kill=True)   # a production path: one line, a no-op

A point does nothing unless ``LLMOPS_FAULTS`` names it. The setting is a comma-separated list of
points, each failing on a step's first attempt only, or on every attempt with ``:all``; with
``:sleep=S`` the point does not fail but takes S seconds more (a slow dependency)::

    LLMOPS_FAULTS=promote.after_register          # the promote step dies right after registering
    LLMOPS_FAULTS=finetune.step.7                 # training's first attempt fails at step 7
    LLMOPS_FAULTS=finetune.step.12:all            # every attempt fails at step 12
    LLMOPS_FAULTS=shadow.answer:sleep=5           # every shadowed request takes 5 s more

How a point fails is the call site's choice: ``kill=True`` is a lost machine (SIGKILL, nothing
after it runs, not even ``finally``), otherwise :class:`InjectedFailure` is raised, which the
step's own retry sees as any error. The points: ``promote.after_register``,
``promote.after_promote`` (llmops.promotion), ``finetune.step.<N>`` (llmops.llm.finetune), and
``shadow.answer`` / ``shadow.answer.<VERSION>`` (llmops.shadow: every challenger, or only that
version, on each request it shadows; a service calls at attempt 0, so it fails every time).
"""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass

from llmops.errors import LlmopsError
from llmops.settings import value

FAULTS_ENV = "LLMOPS_FAULTS"
# area.point[.more][:all][:sleep=S]
_ENTRY = re.compile(r"(?P<point>[a-z0-9_]+(\.[a-z0-9_]+)+)(?P<all>:all)?(:sleep=(?P<sleep>\d+(\.\d+)?))?")


class FaultSettingError(LlmopsError, ValueError):
    """``LLMOPS_FAULTS`` holds an entry that is not ``point``, ``point:all`` or ``point:sleep=S``."""


class InjectedFailure(RuntimeError):
    """Raised on purpose at a fault point that ``LLMOPS_FAULTS`` names."""


@dataclass(frozen=True)
class Fault:
    """How an armed point fails: on every attempt or the first only; by a delay instead of an error."""

    every_attempt: bool
    sleep_s: float | None = None  # None: raise (or kill); else wait this long and go on


def armed_faults() -> dict[str, Fault]:
    """The points ``LLMOPS_FAULTS`` names, each with how it fails."""
    faults = {}
    for entry in filter(None, (e.strip() for e in (value(FAULTS_ENV) or "").split(","))):
        match = _ENTRY.fullmatch(entry)
        if match is None:
            raise FaultSettingError(
                f"{FAULTS_ENV}: {entry!r} is not POINT, POINT:all or POINT:sleep=SECONDS "
                f"(e.g. finetune.step.7)"
            )
        sleep = float(match["sleep"]) if match["sleep"] else None
        faults[match["point"]] = Fault(bool(match["all"]), sleep)
    return faults


def armed_points() -> dict[str, bool]:
    """The points ``LLMOPS_FAULTS`` names, each with whether it fails every attempt."""
    return {point: fault.every_attempt for point, fault in armed_faults().items()}


def fault_point(point: str, *, attempt: int = 0, kill: bool = False) -> None:
    """Fail here if ``LLMOPS_FAULTS`` names ``point`` for this ``attempt`` (0 is a step's first
    try): SIGKILL this process with ``kill``, else raise :class:`InjectedFailure`; a point armed
    with ``:sleep=S`` waits S seconds instead."""
    if not value(FAULTS_ENV):
        return
    fault = armed_faults().get(point)
    if fault is None or (attempt > 0 and not fault.every_attempt):
        return
    if fault.sleep_s is not None:
        time.sleep(fault.sleep_s)
        return
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFailure(f"failure injected at {point} ({FAULTS_ENV})")
