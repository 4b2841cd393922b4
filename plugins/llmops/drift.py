"""Drift of a table against a reference profile.

PSI (population stability index) over the reference's bins works for numeric and
categorical columns alike. Rule of thumb (the industry default): < 0.1 stable,
0.1–0.25 moderate shift, > 0.25 major shift; ``DEFAULT_MAX_PSI`` is 0.2.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel

from llmops.profile import OTHER, Profile, category_counts, numeric_bin_counts

DEFAULT_MAX_PSI = 0.2
_EPS = 1e-4  # floor for empty bins, so log(0) never happens


class ColumnDrift(BaseModel):
    column: str
    kind: str
    statistic: str
    value: float
    threshold: float
    drifted: bool
    detail: str = ""


class DriftReport(BaseModel):
    columns: list[ColumnDrift]
    drifted_share: float

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]


def psi(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Population stability index of two histograms over the same bins."""
    ref = np.asarray(reference_counts, dtype="float64")
    cur = np.asarray(current_counts, dtype="float64")
    if ref.sum() == 0 or cur.sum() == 0:
        return float("nan")
    p = np.clip(ref / ref.sum(), _EPS, None)
    q = np.clip(cur / cur.sum(), _EPS, None)
    return float(np.sum((q - p) * np.log(q / p)))


def compare_to_profile(
    reference: Profile, frame: pd.DataFrame, max_psi: float = DEFAULT_MAX_PSI
) -> DriftReport:
    """PSI per reference column; a column missing from ``frame`` counts as drifted."""
    results: list[ColumnDrift] = []
    for column, ref in reference.columns.items():
        if column not in frame.columns:
            results.append(
                ColumnDrift(
                    column=column,
                    kind=ref.kind,
                    statistic="psi",
                    value=float("inf"),
                    threshold=max_psi,
                    drifted=True,
                    detail="column missing from current data",
                )
            )
            continue
        if ref.kind == "numeric":
            values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype="float64")
            ref_counts = np.asarray(ref.bin_counts)
            cur_counts = numeric_bin_counts(values, ref.edges or [])
        else:
            known = list(ref.value_counts or {})
            ref_counts = np.asarray(list((ref.value_counts or {}).values()))
            cur = category_counts(frame[column], known)
            cur_counts = np.asarray([cur.get(k, 0) for k in known])
            if OTHER not in known and cur.get(OTHER, 0):
                # categories never seen in the reference get their own (empty there) bin
                ref_counts = np.append(ref_counts, 0)
                cur_counts = np.append(cur_counts, cur[OTHER])
        value = psi(ref_counts, cur_counts)
        empty = np.isnan(value)
        results.append(
            ColumnDrift(
                column=column,
                kind=ref.kind,
                statistic="psi",
                value=0.0 if empty else round(value, 4),
                threshold=max_psi,
                drifted=False if empty else value > max_psi,
                detail="no non-missing values to compare" if empty else "",
            )
        )
    share = sum(r.drifted for r in results) / len(results) if results else 0.0
    return DriftReport(columns=results, drifted_share=round(share, 4))
