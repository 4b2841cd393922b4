"""Production monitoring: the inference-log window, label feedback, live metrics, the retrain call.

The drift monitor (flows/monitor_drift.py) reads a window of the inference log, compares it
with the champion's reference profile (``llmops.tabular.drift``), joins label feedback by
(request_id, row) when there is any, and decides whether to retrain. These are its pieces.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from pydantic import BaseModel
from sklearn import metrics as skm

from llmops.gates import GatePolicy
from llmops.tabular.data import DataError, TableSchema, load_table
from llmops.tabular.drift import DriftReport

FEEDBACK_KEYS = ("request_id", "row")


def parse_instant(value: str, field: str) -> str | None:
    """An ISO-8601 instant as a UTC ISO string (naive means UTC); empty means unset."""
    from datetime import datetime, timezone

    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise DataError(
            f"{field}: {value!r} is not an ISO-8601 time (e.g. 2026-11-01T00:00:00+00:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat()


class RetrainDecision(BaseModel):
    retrain: bool
    reasons: list[str]


def load_feedback(path: str | Path, target: str) -> pd.DataFrame:
    """Labels for logged predictions: columns ``request_id``, ``row`` and the target (or ``label``)."""
    frame = load_table(str(path), field="--feedback")
    if target not in frame.columns and "label" in frame.columns:
        frame = frame.rename(columns={"label": target})
    missing = [c for c in (*FEEDBACK_KEYS, target) if c not in frame.columns]
    if missing:
        raise DataError(f"--feedback: {path} lacks column(s) {missing} (need request_id, row, {target!r})")
    frame = frame[[*FEEDBACK_KEYS, target]].copy()
    frame["request_id"] = frame["request_id"].astype(str)
    rows = pd.to_numeric(frame["row"], errors="coerce")
    if rows.isna().any() or (rows % 1 != 0).any():
        raise DataError("--feedback: column 'row' must hold whole numbers (some are missing or not integers)")
    frame["row"] = rows.astype(int)
    frame[target] = frame[target].astype(str)
    return frame.drop_duplicates(subset=list(FEEDBACK_KEYS), keep="last")


def join_feedback(window: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """The logged rows that have a label (inner join on request_id and row)."""
    if window.empty:
        return window.assign(**{c: pd.Series(dtype=object) for c in feedback.columns if c not in window})
    keyed = window.assign(request_id=window["request_id"].astype(str), row=window["row"].astype(int))
    return keyed.merge(feedback, on=list(FEEDBACK_KEYS), how="inner")


def live_metrics(labelled: pd.DataFrame, schema: TableSchema) -> dict[str, float]:
    """Accuracy, precision, recall, F1 of the logged predictions against the feedback labels."""
    truth, predicted = labelled[schema.target].astype(str), labelled["prediction"].astype(str)
    binary = len(schema.classes) == 2
    kwargs = {"average": "binary", "pos_label": schema.classes[1]} if binary else {"average": "macro"}
    return {
        "accuracy": round(float(skm.accuracy_score(truth, predicted)), 6),
        "precision": round(float(skm.precision_score(truth, predicted, zero_division=0, **kwargs)), 6),
        "recall": round(float(skm.recall_score(truth, predicted, zero_division=0, **kwargs)), 6),
        "f1": round(float(skm.f1_score(truth, predicted, zero_division=0, **kwargs)), 6),
        "labelled_rows": float(len(labelled)),
    }


def decide_retrain(
    policy: GatePolicy, drift: DriftReport | None, live_scores: dict[str, float] | None
) -> RetrainDecision:
    """Retrain when the data drifted past the policy's limit or a live metric fell below its minimum."""
    reasons: list[str] = []
    if drift is not None and drift.dataset_drifted:
        reasons.append(
            f"data drift: {drift.drifted_share:.0%} of columns drifted ({', '.join(drift.drifted_columns)})"
        )
    for metric, threshold in policy.metrics.items():
        value = (live_scores or {}).get(metric)
        if value is not None and threshold.min is not None and value < threshold.min:
            reasons.append(f"live {metric} {value:.4f} < {threshold.min}")
    return RetrainDecision(retrain=bool(reasons), reasons=reasons)


def retraining_set(training: pd.DataFrame, labelled: pd.DataFrame, schema: TableSchema) -> pd.DataFrame:
    """The champion's training data plus the newly labelled production rows, in the schema's columns."""
    columns = [*schema.features, schema.target]
    fresh = labelled[columns] if not labelled.empty else labelled.reindex(columns=columns)
    return pd.concat([training[columns], fresh], ignore_index=True)
