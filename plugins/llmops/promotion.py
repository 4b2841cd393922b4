"""Register a gated version with its lineage and move the champion alias (compare-and-set)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmops.classifier import save_model
from llmops.lineage import code_version
from llmops.registry import CHAMPION, AliasConflict, Registry


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

    Returns (version, promoted, note). Refuses a failed gate decision outright."""
    if not gate_decision.get("passed"):
        raise ValueError("gate_decision: the gate failed; a failed gate never registers a champion")
    registry = Registry()
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
    try:
        registry.promote(name, version.version, expected=gate_decision.get("champion_version"))
    except AliasConflict as exc:
        return version.version, False, f"registered {version.tag}, not promoted: {exc}"
    return version.version, True, f"promoted {version.tag} to {CHAMPION}"


def register_classifier(
    *,
    name: str,
    model: Any,
    schema: dict[str, Any],
    reference_profile: dict[str, Any],
    metrics: dict[str, float],
    gate_decision: dict[str, Any],
    dataset_version: str,
    run_pathspec: str,
    candidate: str,
) -> tuple[str, bool, str]:
    """A gated classifier: the skops model file, its schema and reference profile."""
    return register_gated(
        name,
        lambda folder: save_model(model, folder),
        gate_decision=gate_decision,
        labels={"framework": "sklearn"},
        metadata={
            "run": run_pathspec,
            "dataset_version": dataset_version,
            "candidate": candidate,
            "metrics": metrics,
        },
        json_files={"schema.json": schema, "reference_profile.json": reference_profile},
    )
