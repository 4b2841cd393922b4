"""The registry as the UI shows it: names, versions, aliases, gate verdicts and lineage.

Read through :class:`llmops.registry.Registry`, as ``llmops models list`` and ``show`` read it;
promote and rollback call the same registry methods as ``llmops models promote`` and ``rollback``,
with compare-and-set on the alias the page showed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from llmops import paths
from llmops.registry import CHAMPION, ModelVersion, Registry, RegistryError, check_name
from llmops.ui.runs import NotFound

SHOWN_METRICS = ("accuracy", "f1", "roc_auc", "hit_rate", "mrr", "perplexity", "perplexity_ratio", "rouge_l")
# lineage: what each pipeline records (llmops.*.release), as a label and a metadata key
LINEAGE = (
    ("dataset", "dataset_version"),
    ("index", "index_version"),
    ("corpus", "corpus_version"),
    ("prompt", "prompt"),
    ("base model", "base_model"),
    ("embedding", "embedding_model"),
    ("generator", "generator"),
    ("golden", "golden_version"),
)


@dataclass
class VersionRow:
    name: str
    version: str
    created_at: datetime
    aliases: list[str]
    gate: str  # "passed", or "" when the version records no decision (registered by hand)
    policy: str
    run: str  # the Metaflow run pathspec, or ""
    lineage: list[tuple[str, str]]
    metrics: list[tuple[str, float]]


@dataclass
class ModelSummary:
    name: str
    versions: int
    aliases: dict[str, str]
    latest: VersionRow
    shown: list[VersionRow] = field(default_factory=list)


def _row(v: ModelVersion, aliases: dict[str, str]) -> VersionRow:
    meta: dict[str, Any] = v.metadata
    metrics = meta.get("metrics") or {}
    return VersionRow(
        name=v.name,
        version=v.version,
        created_at=v.created_at,
        aliases=sorted(a for a, target in aliases.items() if target == v.version),
        gate="passed" if meta.get("gate_passed") else "",
        policy=str(meta.get("policy_version", "")),
        run=str(meta.get("run", "")),
        lineage=[(label, str(meta[key])) for label, key in LINEAGE if meta.get(key) not in (None, "")],
        metrics=[(k, metrics[k]) for k in SHOWN_METRICS if isinstance(metrics.get(k), int | float)],
    )


_read: dict[str, Any] = {"key": None, "versions": []}
_lock = threading.Lock()


def _store_key() -> tuple | None:
    """What changes when a version is added or deleted: the modification times of the model store's
    folder and of each name's folder (a version is an immutable folder under its name's)."""
    root = paths.bentoml_home() / "models"
    try:
        return tuple((p.name, p.stat().st_mtime_ns) for p in (root, *sorted(root.iterdir())) if p.is_dir())
    except OSError:
        return None


def all_versions() -> list[ModelVersion]:
    """``Registry().versions()``, read again only when the store changed: BentoML parses every
    version's YAML on each listing (about 8 ms a version), so 200 versions would take 1.6 s a page.
    Aliases are not kept: every page reads them anew."""
    key = _store_key()
    with _lock:
        if key is not None and key == _read["key"]:
            return list(_read["versions"])
    found = Registry().versions()
    with _lock:
        _read.update(key=key, versions=found)
    return list(found)


def summaries(per_name: int = 5) -> list[ModelSummary]:
    """Every registered name: its aliases and newest ``per_name`` versions."""
    registry = Registry()
    by_name: dict[str, list[ModelVersion]] = {}
    for v in all_versions():
        by_name.setdefault(v.name, []).append(v)
    out = []
    for name, versions in sorted(by_name.items()):
        aliases = registry.aliases(name)
        rows = [_row(v, aliases) for v in reversed(versions)]  # newest first
        out.append(ModelSummary(name, len(rows), aliases, rows[0], rows[:per_name]))
    return out


def model_versions(name: str, page: int = 1, per_page: int = 50) -> tuple[ModelSummary, int]:
    """One name's versions, newest first, a page of them; :class:`NotFound` for an unknown name."""
    try:
        check_name(name)
    except RegistryError:
        raise NotFound(f"model {name!r} is not registered (see: llmops models list)") from None
    versions = [v for v in all_versions() if v.name == name]
    if not versions:
        raise NotFound(f"model {name!r} is not registered (see: llmops models list)")
    aliases = Registry().aliases(name)
    rows = [_row(v, aliases) for v in reversed(versions)]
    page = max(1, page)
    shown = rows[(page - 1) * per_page : page * per_page]
    return ModelSummary(name, len(rows), aliases, rows[0], shown), max(1, -(-len(rows) // per_page))


def version_detail(name: str, version: str) -> tuple[VersionRow, ModelVersion, dict[str, Any] | None]:
    """One version with its recorded gate decision (``gate_decision.json``, when it has one)."""
    try:
        found = Registry().get(name, version)
    except RegistryError:
        raise NotFound(f"model {name}:{version} not found (see: llmops models list {name})") from None
    path = found.path / "gate_decision.json"
    decision = found.read_json("gate_decision.json") if path.is_file() else None
    return _row(found, Registry().aliases(name)), found, decision


def promote(name: str, version: str, alias: str = CHAMPION, expected: str | None = None) -> str | None:
    """What ``llmops models promote NAME:VERSION --alias ALIAS`` does, only if ``alias`` still points
    at ``expected`` (what the page showed; ``""``: unset)."""
    registry = Registry()
    if expected is None:
        return registry.promote(name, version, alias=alias)
    return registry.promote(name, version, alias=alias, expected=expected or None)


def rollback(name: str, alias: str = CHAMPION) -> str:
    """What ``llmops models rollback NAME --alias ALIAS`` does."""
    return Registry().rollback(name, alias=alias)
