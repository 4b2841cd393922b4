"""Register a gated classifier: the skops model file with its schema and reference profile, through
the one promote guard (:func:`llmops.promotion.register_gated`), as ``rag/release.py`` and
``llm/release.py`` do for the other pipelines."""

from __future__ import annotations

from typing import Any

from llmops.promotion import register_gated
from llmops.tabular.classifier import save_model


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
