"""Register a gated version with its lineage and move the champion alias (compare-and-set).

Promotion is idempotent per run: a run (or a resume of it) that was stopped after registering,
before or after moving the alias, finds the version it registered by its run pathspec and
finishes from there instead of registering a second one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmops.faults import fault_point
from llmops.lineage import code_version, resumed_runs
from llmops.registry import CHAMPION, AliasConflict, ModelVersion, Registry


def gate_refusal(gate_decision: dict[str, Any]) -> str | None:
    """The promote step's note when the gate failed (``None`` when it passed): every flow says it
    the same way, naming the rules that failed."""
    if gate_decision.get("passed"):
        return None
    failed = [r["rule"] for r in gate_decision.get("rules", []) if not r["passed"]]
    return f"not promoted: gate failed on {', '.join(failed) or 'no rule (the decision says failed)'}"


def registered_by(registry: Registry, name: str, runs: Sequence[str]) -> ModelVersion | None:
    """The gated version of ``name`` that one of ``runs`` registered (the latest, if several)."""
    import bentoml

    try:
        versions = registry.versions(name)
    except bentoml.exceptions.NotFound:  # no version of this name yet
        return None
    found = [v for v in versions if v.metadata.get("run") in runs and v.metadata.get("gate_passed")]
    return found[-1] if found else None


def _promote(registry: Registry, name: str, version: ModelVersion, expected: str | None) -> tuple[bool, str]:
    try:
        registry.promote(name, version.version, expected=expected)
    except AliasConflict as exc:
        return False, f"registered {version.tag}, not promoted: {exc}"
    return True, f"promoted {version.tag} to {CHAMPION}"


def _finish(registry: Registry, name: str, version: ModelVersion, expected: str | None) -> tuple[bool, str]:
    """An earlier attempt of this run registered ``version``: move the alias if it has not."""
    current = registry.aliases(name).get(CHAMPION)
    if current == version.version:
        return True, f"promoted {version.tag} to {CHAMPION} (an earlier attempt of this run had done it)"
    moved = [
        e
        for e in registry.history(name)
        if e["alias"] == CHAMPION and e["action"] == "promote" and e["version"] == version.version
    ]
    if moved:  # it was promoted, and another promotion has replaced it since: leave that one
        return True, (
            f"promoted {version.tag} to {CHAMPION} (an earlier attempt of this run had done it; "
            f"{CHAMPION} has moved on to {current} since)"
        )
    promoted, note = _promote(registry, name, version, expected)
    return promoted, f"{note} (registered by an earlier attempt of this run)"


def register_gated(
    name: str,
    write_files: Callable[[Path], None],
    *,
    gate_decision: dict[str, Any],
    metadata: dict[str, Any],
    labels: dict[str, str],
    json_files: dict[str, Any],
) -> tuple[str, bool, str]:
    """Register a new version and promote it if the champion is still the one the gate saw.

    Returns (version, promoted, note). Refuses a failed gate decision outright. When this run
    (``metadata["run"]``) or a run it resumes already registered a version, no second one is
    registered: the alias is moved to that one if it is not there yet."""
    if not gate_decision.get("passed"):
        # programming error: every flow asks gate_refusal first and registers only a passed decision
        raise ValueError("gate_decision: the gate failed; a failed gate never registers a champion")
    registry = Registry()
    expected = gate_decision.get("champion_version")
    if metadata.get("run"):
        earlier = registered_by(registry, name, resumed_runs(metadata["run"]))
        if earlier is not None:
            promoted, note = _finish(registry, name, earlier, expected)
            return earlier.version, promoted, note
    version = registry.register(
        name,
        write_files,
        labels={**labels, "stage": "gated"},
        metadata={
            **metadata,
            "code_version": code_version(),
            "gate_passed": True,
            "policy_version": gate_decision["policy_version"],
        },
        json_files={**json_files, "gate_decision.json": gate_decision},
    )
    fault_point("promote.after_register", kill=True)  # a crash here is what resume must finish
    promoted, note = _promote(registry, name, version, expected)
    fault_point("promote.after_promote", kill=True)
    return version.version, promoted, note


def promote_challenger(name: str, version: str, gate_decision: dict[str, Any]) -> tuple[bool, str]:
    """Move ``champion`` to the challenger ``version`` an online gate passed (``llmops models
    decide``), by the same compare-and-set as every promotion: only if the champion is still the one
    the gate judged against and ``challenger`` still names ``version``. Returns (promoted, note);
    a failed decision moves nothing. A resumed run whose earlier attempt moved it says so."""
    from llmops.online_rules import CHALLENGER

    refusal = gate_refusal(gate_decision)
    if refusal is not None:
        return False, refusal
    registry = Registry()
    aliases = registry.aliases(name)
    if aliases.get(CHAMPION) == version:
        return True, f"{name}:{version} is already the {CHAMPION} (an earlier attempt of this run moved it)"
    if aliases.get(CHALLENGER) != version:
        return False, (
            f"not promoted: {name}@{CHALLENGER} moved to {aliases.get(CHALLENGER)} since {version} "
            f"was judged; decide again on the new challenger's traffic"
        )
    try:
        registry.promote(name, version, expected=gate_decision.get("champion_version"))
    except AliasConflict as exc:  # not _promote's note: this run registered nothing
        return False, f"not promoted: {exc}"
    return True, f"promoted {name}:{version} to {CHAMPION}"
