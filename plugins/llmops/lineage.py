"""Lineage: where a registered artifact came from."""

from __future__ import annotations

import subprocess
from pathlib import Path

MAX_RESUMES = 100  # a chain of resumes longer than this is not followed further


def code_version(path: str | Path = ".") -> str:
    """``git:<sha>`` (``+dirty`` with uncommitted changes), or ``unknown`` outside a checkout."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=path, check=True, capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"git:{sha}{'+dirty' if dirty else ''}"


def resumed_runs(run_pathspec: str) -> list[str]:
    """``run_pathspec`` and the runs it continues, nearest first: ``Flow/3`` resumed from
    ``Flow/2``, itself resumed from ``Flow/1``, gives all three.

    Metaflow marks each task a resume cloned with the ``origin-run-id`` it came from; a run whose
    ``start`` was cloned carries its predecessor's results, so a registration made by any of them
    counts as this run's. Without Metaflow, or for a run it does not know, just ``[run_pathspec]``."""
    runs = [run_pathspec]
    try:
        from metaflow import Run
        from metaflow.exception import MetaflowException
    except ImportError:
        return runs
    flow = run_pathspec.split("/")[0]
    while len(runs) < MAX_RESUMES:
        try:
            start = Run(runs[-1], _namespace_check=False)["start"].task
            origin = start.metadata_dict.get("origin-run-id") if start else None
        except (MetaflowException, KeyError):
            break
        if not origin or f"{flow}/{origin}" in runs:
            break
        runs.append(f"{flow}/{origin}")
    return runs
