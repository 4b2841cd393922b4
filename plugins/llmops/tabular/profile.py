"""Reference profiles: a compact, JSON-serializable summary of a table kept for drift checks.

Numeric columns keep decile bin edges with counts, summary statistics, a bounded value sample
(for KS and Wasserstein) and, when they hold at most ``DISCRETE_MAX`` distinct values, the
count of each value. Categorical columns keep value counts (the top ``max_categories``, the
rest pooled under ``OTHER``). Raw reference rows are never needed.

The sample is every finite value when a column has at most ``sample_size`` of them (KS and
Wasserstein are then exact); above that it is the ``sample_size`` quantiles at
``(i + 0.5) / sample_size``: equal-weight points whose CDF is within ``1 / sample_size`` of
the reference's, deterministic, and a closer summary of the distribution than a random
draw of the same size. Profiles written before the sample existed still load; drift then
falls back to PSI for their numeric columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel

from llmops.tabular.data import ColumnKind, TableSchema

OTHER = "__other__"
SAMPLE_SIZE = 5_000
DISCRETE_MAX = 20  # numeric columns with this many distinct values or fewer also keep per-value counts


class ColumnProfile(BaseModel):
    kind: ColumnKind
    count: int  # non-missing values (finite ones for numeric columns)
    missing: int
    # numeric
    edges: list[float] | None = None  # interior edges; bins are (-inf, e0], (e0, e1], …, (ek, inf)
    bin_counts: list[int] | None = None
    mean: float | None = None
    std: float | None = None  # population std (ddof=0), as Evidently norms Wasserstein by
    min: float | None = None
    max: float | None = None
    sample: list[float] | None = None  # sorted; see the module docstring
    discrete_values: list[float] | None = None  # sorted distinct values, when <= DISCRETE_MAX
    discrete_counts: list[int] | None = None
    # categorical
    value_counts: dict[str, int] | None = None

    @property
    def sample_is_exact(self) -> bool:
        """True when ``sample`` holds every finite reference value, not a quantile summary."""
        return self.sample is not None and len(self.sample) == self.count


class Profile(BaseModel):
    rows: int
    columns: dict[str, ColumnProfile]


def numeric_bin_counts(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts of finite ``values`` in the bins the interior ``edges`` define (len(edges)+1 bins)."""
    finite = values[np.isfinite(values)]
    index = np.searchsorted(np.asarray(edges, dtype="float64"), finite, side="left")
    return np.bincount(index, minlength=len(edges) + 1)


def category_counts(values: pd.Series, known: list[str] | None) -> dict[str, int]:
    """Non-missing values counted by their string form; with ``known``, the rest pooled as OTHER."""
    raw = values.value_counts(dropna=True)  # on the raw values: cheaper than stringifying every row
    raw = raw[raw > 0]  # a pandas Categorical lists unobserved categories with 0
    counts = pd.Series(raw.to_numpy(), index=raw.index.astype(str)).groupby(level=0, sort=False).sum()
    if known is None:
        return {str(k): int(v) for k, v in counts.items()}
    result = {k: int(counts.get(k, 0)) for k in known if k != OTHER}
    result[OTHER] = int(counts[~counts.index.isin(result.keys())].sum())
    return result


def finite_values(series: pd.Series) -> np.ndarray:
    """The finite numeric values of ``series`` as float64 (non-numbers and ±inf dropped)."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    return values[np.isfinite(values)]


def value_sample(sorted_values: np.ndarray, size: int = SAMPLE_SIZE) -> np.ndarray:
    """All of ``sorted_values`` when there are at most ``size``, else its quantiles at (i + 0.5) / size."""
    n = sorted_values.size
    if n <= size:
        return sorted_values
    # inverted-CDF quantiles: actual data values, so ties and discrete columns stay exact
    index = np.ceil(n * (np.arange(size) + 0.5) / size).astype(np.int64) - 1
    return sorted_values[index]


def numeric_profile(series: pd.Series, bins: int = 10, sample_size: int = SAMPLE_SIZE) -> ColumnProfile:
    finite = np.sort(finite_values(series))
    quantiles = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]) if finite.size else []
    edges = sorted({float(q) for q in quantiles})
    starts = np.flatnonzero(np.r_[True, finite[1:] != finite[:-1]]) if finite.size else np.array([], int)
    discrete = finite.size > 0 and starts.size <= DISCRETE_MAX
    return ColumnProfile(
        kind="numeric",
        count=int(finite.size),
        missing=int(series.isna().sum()),
        edges=edges,
        bin_counts=numeric_bin_counts(finite, edges).tolist(),
        mean=float(finite.mean()) if finite.size else None,
        std=float(finite.std()) if finite.size else None,
        min=float(finite[0]) if finite.size else None,
        max=float(finite[-1]) if finite.size else None,
        sample=value_sample(finite, sample_size).tolist(),
        discrete_values=finite[starts].tolist() if discrete else None,
        discrete_counts=np.diff(np.r_[starts, finite.size]).tolist() if discrete else None,
    )


def build_profile(
    frame: pd.DataFrame,
    schema: TableSchema,
    bins: int = 10,
    max_categories: int = 50,
    sample_size: int = SAMPLE_SIZE,
) -> Profile:
    columns: dict[str, ColumnProfile] = {}
    for column, kind in schema.features.items():
        series = frame[column]
        if kind == "numeric":
            columns[column] = numeric_profile(series, bins, sample_size)
        else:
            counts = category_counts(series, None)
            top = sorted(counts, key=counts.get, reverse=True)[:max_categories]
            columns[column] = ColumnProfile(
                kind=kind,
                count=int(series.notna().sum()),
                missing=int(series.isna().sum()),
                value_counts=category_counts(series, top),
            )
    return Profile(rows=len(frame), columns=columns)
