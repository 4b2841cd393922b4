"""Fault points: named places where a test makes the process fail on purpose, to show that a
failure there loses nothing (a resumed run finishes its promotion, a retried training step
continues from its checkpoint).

    fault_point("promote.after_register", kill=True)   # a production path: one line, a no-op

A point does nothing unless ``LLMOPS_FAULTS`` names it. The setting is a comma-separated list of
points, each failing on a step's first attempt only, or on every attempt with ``:all``::

    LLMOPS_FAULTS=promote.after_register          # the promote step dies right after registering
    LLMOPS_FAULTS=finetune.step.7                 # training's first attempt fails at step 7
    LLMOPS_FAULTS=finetune.step.12:all            # every attempt fails at step 12

How a point fails is the call site's choice: ``kill=True`` is a lost machine (SIGKILL, nothing
after it runs, not even ``finally``), otherwise :class:`InjectedFailure` is raised, which the
step's own retry sees as any error. The points: ``promote.after_register``,
``promote.after_promote`` (llmops.promotion) and ``finetune.step.<N>`` (llmops.llm.finetune).
"""

from __future__ import annotations

import os
import re
import signal

from llmops.errors import LlmopsError
from llmops.settings import value

FAULTS_ENV = "LLMOPS_FAULTS"
_ENTRY = re.compile(r"(?P<point>[a-z0-9_]+(\.[a-z0-9_]+)+)(?P<all>:all)?")  # area.point[.more]


class FaultSettingError(LlmopsError, ValueError):
    """``LLMOPS_FAULTS`` holds an entry that is not ``point`` or ``point:all``."""


class InjectedFailure(RuntimeError):
    """Raised on purpose at a fault point that ``LLMOPS_FAULTS`` names."""


def armed_points() -> dict[str, bool]:
    """The points ``LLMOPS_FAULTS`` names, each with whether it fails every attempt."""
    points = {}
    for entry in filter(None, (e.strip() for e in (value(FAULTS_ENV) or "").split(","))):
        match = _ENTRY.fullmatch(entry)
        if match is None:
            raise FaultSettingError(
                f"{FAULTS_ENV}: {entry!r} is not POINT or POINT:all (e.g. finetune.step.7)"
            )
        points[match["point"]] = bool(match["all"])
    return points


def fault_point(point: str, *, attempt: int = 0, kill: bool = False) -> None:
    """Fail here if ``LLMOPS_FAULTS`` names ``point`` for this ``attempt`` (0 is a step's first
    try): SIGKILL this process with ``kill``, else raise :class:`InjectedFailure`."""
    if not value(FAULTS_ENV):
        return
    armed = armed_points()
    if point not in armed or (attempt > 0 and not armed[point]):
        return
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFailure(f"failure injected at {point} ({FAULTS_ENV})")
