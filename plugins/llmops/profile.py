"""Reference profiles: a compact, JSON-serializable summary of a table kept for drift checks.

Numeric columns keep decile bin edges with counts (and summary statistics); categorical
columns keep value counts (the top ``max_categories``, the rest pooled). Drift is measured
by re-binning new data on the reference's edges, so raw reference rows are never needed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel

from llmops.data import ColumnKind, TableSchema

OTHER = "__other__"


class ColumnProfile(BaseModel):
    kind: ColumnKind
    count: int
    missing: int
    # numeric
    edges: list[float] | None = None  # interior edges; bins are (-inf, e0], (e0, e1], …, (ek, inf)
    bin_counts: list[int] | None = None
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    # categorical
    value_counts: dict[str, int] | None = None


class Profile(BaseModel):
    rows: int
    columns: dict[str, ColumnProfile]


def numeric_bin_counts(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts of finite ``values`` in the bins the interior ``edges`` define (len(edges)+1 bins)."""
    finite = values[np.isfinite(values)]
    index = np.searchsorted(np.asarray(edges, dtype="float64"), finite, side="left")
    return np.bincount(index, minlength=len(edges) + 1)


def category_counts(values: pd.Series, known: list[str] | None) -> dict[str, int]:
    counts = values.dropna().astype(str).value_counts()
    if known is None:
        return {str(k): int(v) for k, v in counts.items()}
    result = {k: int(counts.get(k, 0)) for k in known if k != OTHER}
    result[OTHER] = int(counts[~counts.index.isin(result.keys())].sum())
    return result


def build_profile(
    frame: pd.DataFrame, schema: TableSchema, bins: int = 10, max_categories: int = 50
) -> Profile:
    columns: dict[str, ColumnProfile] = {}
    for column, kind in schema.features.items():
        series = frame[column]
        missing = int(series.isna().sum())
        if kind == "numeric":
            values = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64")
            finite = values[np.isfinite(values)]
            quantiles = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]) if finite.size else []
            edges = sorted({float(q) for q in quantiles})
            columns[column] = ColumnProfile(
                kind=kind,
                count=int(finite.size),
                missing=missing,
                edges=edges,
                bin_counts=numeric_bin_counts(values, edges).tolist(),
                mean=float(finite.mean()) if finite.size else None,
                std=float(finite.std()) if finite.size else None,
                min=float(finite.min()) if finite.size else None,
                max=float(finite.max()) if finite.size else None,
            )
        else:
            counts = category_counts(series, None)
            top = sorted(counts, key=counts.get, reverse=True)[:max_categories]
            columns[column] = ColumnProfile(
                kind=kind,
                count=int(series.notna().sum()),
                missing=missing,
                value_counts=category_counts(series, top),
            )
    return Profile(rows=len(frame), columns=columns)
