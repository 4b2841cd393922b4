"""A classifier in the registry as if a training run's gate had passed it, for the tests and
benches that serve, reload or move a model without running the training flow:

    model, schema = fit_classifier(held_out=40)   # the bundled data less its last 40 rows
    version = register_passing_classifier("svc-1a2b3c4d", model, schema)   # promoted to champion

It goes through the same release path as ``flows/train_classifier.py`` (the skops file, schema,
the one promote guard); only the gate decision is made up: passed, with no rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmops.registry import ModelVersion, Registry
from llmops.tabular.classifier import build_pipeline, candidates
from llmops.tabular.data import TableSchema, infer_schema, load_table, normalize
from llmops.tabular.release import register_classifier


def fit_classifier(
    family: str = "logistic_regression", *, held_out: int = 0, dropped: Sequence[str] = ()
) -> tuple[Any, TableSchema]:
    """``family`` fitted on the bundled data, less its last ``held_out`` rows and ``dropped`` columns."""
    raw = load_table().drop(columns=list(dropped))
    schema = infer_schema(raw, "target")
    train = normalize(raw, schema).iloc[: len(raw) - held_out]
    model = build_pipeline(schema, candidates([family])[0])
    return model.fit(train[list(schema.features)], train[schema.target]), schema


def register_passing_classifier(
    name: str,
    model: Any,
    schema: TableSchema,
    *,
    promote: bool = True,
    run_pathspec: str = "TestFlow/1",
    candidate: str = "logistic_regression",
    metrics: dict[str, float] | None = None,
    policy_version: str = "test",
    dataset_version: str = "ds-test",
) -> ModelVersion:
    """Register ``model`` under ``name`` with a passed gate. ``promote``: it becomes the champion
    (the gate saw none); otherwise it is registered beside the champion, whose alias stays put
    (the gate saw another champion, so the compare-and-set refuses). A run registers once: give
    each version its own ``run_pathspec``. Raises AssertionError when the promotion went the other
    way, with the registry's note."""
    gate_decision = {
        "passed": True,
        "policy_version": policy_version,
        "champion_version": None if promote else "not-the-champion",
        "rules": [],
    }
    version, promoted, note = register_classifier(
        name=name,
        model=model,
        schema=schema.model_dump(),
        reference_profile={},
        metrics=metrics or {},
        gate_decision=gate_decision,
        dataset_version=dataset_version,
        run_pathspec=run_pathspec,
        candidate=candidate,
    )
    if promoted != promote:
        raise AssertionError(note)
    return Registry().get(name, version)
