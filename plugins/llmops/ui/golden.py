"""Golden sets in the UI: their versions and diffs, and the candidates the logs suggest.

The same modules as ``llmops rag golden candidates|accept|reject`` (``llmops.rag.golden_curation``):
the versions are the snapshots a curation keeps under ``$LLMOPS_HOME/golden/<name>/``, the
candidates are found in the release's inference log on each read, and a decision is recorded
where the CLI records it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from llmops.ui.runs import NotFound

if TYPE_CHECKING:
    from llmops.rag.golden_growth import CandidateReport

CURRENT = "current"


@dataclass
class GoldenVersion:
    version: str
    items: int
    saved_at: datetime | None  # None: the file as it is now
    current: bool


def resolve(golden: str, known: list[Path]) -> Path:
    """One of the golden sets the UI serves, by path or by name; :class:`NotFound` otherwise."""
    for path in known:
        if golden in (str(path), path.name, path.stem):
            return path
    raise NotFound(f"golden set {golden!r} is not one of {[p.name for p in known]} (llmops ui --golden FILE)")


def versions(golden: Path) -> list[GoldenVersion]:
    """The current file and every snapshot a curation kept, newest first."""
    from llmops.rag.evaluation import load_golden
    from llmops.rag.golden_curation import curation_dir

    current = load_golden(golden)
    found = [GoldenVersion(current.content_version, len(current.questions), None, True)]
    for snap in sorted(
        curation_dir(golden).glob("golden-*.yaml"), key=lambda p: p.stat().st_mtime, reverse=True
    ):
        if snap.stem == current.content_version:
            continue
        items = len(load_golden(snap).questions)
        saved = datetime.fromtimestamp(snap.stat().st_mtime, timezone.utc)
        found.append(GoldenVersion(snap.stem, items, saved, False))
    return found


def _text(golden: Path, version: str) -> str:
    from llmops.rag.evaluation import load_golden
    from llmops.rag.golden_curation import curation_dir

    if version in (CURRENT, load_golden(golden).content_version):
        return golden.read_text()
    snap = curation_dir(golden) / f"{version}.yaml"
    if not version.startswith("golden-") or not snap.is_file():
        raise NotFound(f"golden set {golden.name} has no version {version!r}")
    return snap.read_text()


def diff(golden: Path, old: str, new: str = CURRENT) -> list[str]:
    """The unified diff of two versions (``current``: the file as it is now)."""
    lines = difflib.unified_diff(
        _text(golden, old).splitlines(),
        _text(golden, new).splitlines(),
        fromfile=old,
        tofile=new,
        lineterm="",
    )
    return list(lines)


def candidates(golden: Path, release: str, since: str | None = None) -> CandidateReport:
    from llmops.rag.golden_curation import golden_candidates

    return golden_candidates(golden, release, since or None)


def history(golden: Path) -> list:
    """Accepted and rejected candidates, newest first."""
    from llmops.rag.golden_curation import decisions

    return list(reversed(decisions(golden)))


def decide(golden: Path, release: str, verdict: str, ids: list[str], reference: str | None) -> str:
    """Accept or reject candidates as ``llmops rag golden accept|reject`` does; returns what happened."""
    from llmops.rag.golden_curation import accept, reject
    from llmops.rag.golden_growth import GrowthError

    if verdict not in ("accept", "reject"):
        raise GrowthError(f"decision: {verdict!r} is not accept or reject")
    report = candidates(golden, release)
    if verdict == "accept":
        done = accept(golden, report, ids, reference or None)
        return (
            f"golden {done.name}: {done.old_version} -> {done.new_version} "
            f"({done.old_items} -> {done.new_items} items)"
        )
    rejected = reject(golden, report, ids)
    return "rejected " + ", ".join(c.id for c in rejected)
