"""Drift of a table against a reference profile: a test per column and a verdict for the table.

    report = detect_drift(reference_profile, current_frame, DriftRule())   # method: auto
    report.dataset_drifted, report.drifted_columns, report.columns[0].detail

``method: auto`` picks the test as Evidently's DataDriftPreset does (0.7), by column kind,
distinct values (reference and current together) and reference size (the column's
non-missing count in the profile):

    column                                reference <= 1000 rows     reference > 1000 rows
    numeric, > 5 distinct values          ks     drift if p <= 0.05   wasserstein  drift if >= 0.1
    categorical, numeric <= 5 distinct    chi2   drift if p <  0.05   js           drift if >= 0.1
      ... with <= 2 distinct values       z      drift if p <  0.05   js           drift if >= 0.1
    any, only when asked (or fallback)    psi    drift if >= 0.2 (``max_psi``)

- ks: two-sample Kolmogorov–Smirnov (scipy ``ks_2samp``); when the profile holds a quantile
  summary rather than every value, D comes from the summary (within 1/5000) and p from the
  asymptotic distribution with the true reference size.
- wasserstein: first Wasserstein distance divided by max(reference std, 0.001).
- chi2: Evidently's goodness of fit: current counts against reference counts scaled to the
  current size; a category absent from the reference gives p = 0. It ignores the
  reference's own sampling noise, so with a small reference it alarms more than 5% of the
  time on unshifted data (about 1 in 5 at equal sizes, most of the time with a current window
  several times larger). ``chi2_homogeneity`` (not an Evidently test) is the two-sample
  chi-square test of the 2 x k table, which holds its level: ``method: chi2_homogeneity`` puts
  it on the categorical columns and leaves the rest to auto.
- z: two-proportion Z-test (pooled variance), two-sided.
- js: Jensen–Shannon distance (natural log, so within [0, 0.83]) over categories or distinct
  values, or for numeric columns with > 20 distinct values over Sturges bins spanning both sides.
- psi: population stability index over the reference's decile bins or categories, empty bins
  floored at 1e-4 (this project's PSI: Evidently's uses Sturges bins and a 0.1 default).

The table drifted when ``drifted_share`` (drifted columns over the columns measured: a column
missing from the current data counts as measured and drifted; an empty or all-NaN one is not
measured) is above ``max_drifted_share`` (default 0.5; Evidently flags >= its ``drift_share``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel

from llmops.errors import LlmopsError
from llmops.tabular.drift_stats import (
    cdf_gap,
    chi2_homogeneity_test,
    chi2_test,
    js_distance,
    ks_test,
    psi,
    z_test,
)
from llmops.tabular.profile import (
    OTHER,
    ColumnProfile,
    Profile,
    category_counts,
    finite_values,
    numeric_bin_counts,
)
from llmops.tabular.rules import DriftRule

FEW_VALUES = 5  # numeric columns with this many distinct values or fewer are tested as categories


class DriftError(LlmopsError, ValueError):
    """A drift check that cannot be made as asked; the message names the column and what to change."""


class ColumnDrift(BaseModel):
    column: str
    kind: str
    statistic: str  # the test: ks, wasserstein, chi2, chi2_homogeneity, z, js, psi; "none": not measured
    value: float | None  # compared with threshold: the p-value of the p-value tests, else the distance
    threshold: float
    drifted: bool
    detail: str = ""
    p_value: float | None = None

    @property
    def measured(self) -> bool:
        return self.value is not None or self.drifted


class DriftReport(BaseModel):
    columns: list[ColumnDrift]
    drifted_share: float  # drifted columns / measured columns
    dataset_drifted: bool = False
    max_drifted_share: float | None = None

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    @property
    def unmeasured_columns(self) -> list[str]:
        return [c.column for c in self.columns if not c.measured]


# ---- one column ---------------------------------------------------------------------------------


def _counts(
    ref: ColumnProfile, series: pd.Series, cur: np.ndarray | None
) -> tuple[list, np.ndarray, np.ndarray]:
    """Union of reference and current categories (or distinct numeric values) with both counts."""
    if ref.kind == "numeric":
        ref_map = dict(zip(ref.discrete_values or [], ref.discrete_counts or [], strict=True))
        values, counts = np.unique(cur, return_counts=True)
        cur_map = dict(zip(values.tolist(), counts.tolist(), strict=True))
    else:
        ref_map = {k: v for k, v in (ref.value_counts or {}).items() if v > 0}
        cur_map = category_counts(series, None)
        if OTHER in ref_map:  # the reference pooled its rare categories: pool the unknown ones alike
            cur_map = category_counts(series, list(ref_map))
    keys = list(ref_map) + [k for k in cur_map if k not in ref_map]
    return (
        keys,
        np.array([ref_map.get(k, 0) for k in keys], dtype="float64"),
        np.array([cur_map.get(k, 0) for k in keys], dtype="float64"),
    )


def _auto(kind: str, ref_rows: int, distinct: int | None, rule: DriftRule) -> str:
    small = ref_rows <= rule.small_reference
    if kind == "categorical" or (distinct is not None and distinct <= FEW_VALUES):
        return ("chi2" if distinct is None or distinct > 2 else "z") if small else "js"
    return "ks" if small else "wasserstein"


def _fits(test: str, kind: str, discrete: bool, distinct: int | None) -> bool:
    as_categories = kind == "categorical" or discrete
    return {
        "ks": kind == "numeric",
        "wasserstein": kind == "numeric",
        "chi2": as_categories,
        "chi2_homogeneity": as_categories,
        "z": as_categories and distinct is not None and distinct <= 2,
    }.get(test, True)


def _not_measured(column: str, ref: ColumnProfile, detail: str) -> ColumnDrift:
    return ColumnDrift(
        column=column,
        kind=ref.kind,
        statistic="none",
        value=None,
        threshold=0.0,
        drifted=False,
        detail=detail,
    )


def _choose(
    column: str, ref: ColumnProfile, discrete: bool, distinct: int | None, rule: DriftRule
) -> tuple[str, list[str]]:
    """(test, notes): the column's own method, else the rule's where it fits, else auto."""
    own = rule.per_column.get(column)
    if own is not None and own.method != "auto":
        if not _fits(own.method, ref.kind, discrete, distinct):
            raise DriftError(
                f"drift.per_column.{column}.method: {own.method!r} cannot test the {ref.kind} column "
                f"{column!r} ({distinct or 'many'} distinct values): use js or psi, or auto"
            )
        test, notes = own.method, []
    elif rule.method != "auto" and _fits(rule.method, ref.kind, discrete, distinct):
        test, notes = rule.method, []
    else:
        test = _auto(ref.kind, ref.count, distinct, rule)
        side = "<=" if ref.count <= rule.small_reference else ">"
        notes = [f"auto: reference {ref.count} rows {side} {rule.small_reference}"]
    if ref.kind == "numeric" and ref.sample is None and test != "psi":
        notes.append(f"psi instead of {test}: the reference profile has no value sample (an older profile)")
        test = "psi"
    return test, notes


def column_drift(column: str, ref: ColumnProfile, series: pd.Series, rule: DriftRule) -> ColumnDrift:
    """The drift of one current column against its reference profile, under ``rule``."""
    if ref.count == 0:
        return _not_measured(column, ref, "no non-missing values in the reference")
    numeric = ref.kind == "numeric"
    discrete = numeric and ref.discrete_values is not None
    # sorted below only for the tests that read it in order: a 1M-row sort costs about 50 ms
    cur = finite_values(series) if numeric else np.array([])
    # categories, or the distinct values of a few-valued numeric column, counted on both sides
    keys, ref_counts, cur_counts = _counts(ref, series, cur) if discrete or not numeric else ([], None, None)
    # a categorical column's counts already leave out its missing values: no second pass over them
    if (cur.size if numeric else cur_counts.sum()) == 0:
        return _not_measured(column, ref, "no non-missing values in the current data")
    distinct = len(keys) or None
    test, notes = _choose(column, ref, discrete, distinct, rule)
    if test in ("ks", "wasserstein") or (test == "js" and numeric and not discrete):
        cur = np.sort(cur)

    p_value = None
    if test in ("ks", "wasserstein"):
        points, weights = np.asarray(ref.sample, dtype="float64"), None
        if discrete and not ref.sample_is_exact:  # exact counts beat the quantile summary
            points, weights = np.asarray(ref.discrete_values), np.asarray(ref.discrete_counts)
        if test == "ks":
            statistic, p_value = ks_test(points, cur, ref.count, weights)
            notes.insert(0, f"D={statistic:.4g}")
        else:
            statistic = cdf_gap(points, cur, weights)[1] / max(ref.std or 0.0, 0.001)
    elif test == "psi" and numeric:  # on the reference's decile bins, discrete or not
        statistic = psi(np.asarray(ref.bin_counts), numeric_bin_counts(cur, ref.edges or []))
    elif test == "js" and numeric and not discrete:
        edges = numeric_edges(ref, cur)
        sample = np.asarray(ref.sample, dtype="float64")
        statistic = js_distance(np.histogram(sample, edges)[0], np.histogram(cur, edges)[0])
    elif test in ("psi", "js"):
        statistic = (psi if test == "psi" else js_distance)(ref_counts, cur_counts)
    else:
        tests = {"chi2": chi2_test, "chi2_homogeneity": chi2_homogeneity_test, "z": z_test}
        statistic, p_value = tests[test](ref_counts, cur_counts)
        notes.insert(0, f"{'z' if test == 'z' else 'chi2'}={statistic:.4g}")
    if keys and (new := [k for k, r, c in zip(keys, ref_counts, cur_counts, strict=True) if r == 0 < c]):
        share = cur_counts[ref_counts == 0].sum() / cur_counts.sum()
        shown = ", ".join(repr(k) for k in new[:5]) + (", …" if len(new) > 5 else "")
        notes.append(f"{len(new)} new {'values' if numeric else 'categories'} ({share:.1%} of rows): {shown}")

    threshold = rule.threshold_for(column, test)
    if p_value is not None:  # Evidently: ks drifts at p <= threshold, chi2 and z at p < threshold
        value, drifted = p_value, (p_value <= threshold if test == "ks" else p_value < threshold)
    else:
        value = float(statistic)
        drifted = value >= threshold
    return ColumnDrift(
        column=column,
        kind=ref.kind,
        statistic=test,
        value=value,
        threshold=threshold,
        drifted=bool(drifted),
        detail="; ".join(notes),
        p_value=p_value,
    )


# ---- the table ----------------------------------------------------------------------------------


def detect_drift(reference: Profile, current: pd.DataFrame, rule: DriftRule | None = None) -> DriftReport:
    """Test every reference column in ``current``; a column missing from it counts as drifted.

    Raises ``DriftError`` (naming the column) when ``rule.per_column`` forces a test that cannot
    apply to that column.
    """
    rule = rule or DriftRule()
    results: list[ColumnDrift] = []
    for column, ref in reference.columns.items():
        if column not in current.columns:
            results.append(
                ColumnDrift(
                    column=column,
                    kind=ref.kind,
                    statistic="none",
                    value=None,
                    threshold=0.0,
                    drifted=True,
                    detail="column missing from current data",
                )
            )
            continue
        results.append(column_drift(column, ref, current[column], rule))
    measured = [c for c in results if c.measured]
    share = sum(c.drifted for c in measured) / len(measured) if measured else 0.0
    return DriftReport(
        columns=results,
        drifted_share=share,
        dataset_drifted=share > rule.max_drifted_share,
        max_drifted_share=rule.max_drifted_share,
    )


def compare_to_profile(
    reference: Profile, frame: pd.DataFrame, rule: DriftRule | float | None = None
) -> DriftReport:
    """``detect_drift``; a number for ``rule`` is the first form's PSI threshold (``max_psi``)."""
    if isinstance(rule, int | float):
        rule = DriftRule(method="psi", max_psi=rule)
    return detect_drift(reference, frame, rule)


# ---- plotting helper ----------------------------------------------------------------------------


def numeric_edges(ref: ColumnProfile, cur_sorted: np.ndarray, bins: int | None = None) -> np.ndarray:
    """Equal-width edges over both sides' range; ``bins`` defaults to Sturges' rule, as Evidently's js."""
    low = min(ref.min if ref.min is not None else np.inf, cur_sorted[0] if cur_sorted.size else np.inf)
    high = max(ref.max if ref.max is not None else -np.inf, cur_sorted[-1] if cur_sorted.size else -np.inf)
    if not np.isfinite(low):
        low = high = 0.0
    bins = bins or int(np.ceil(np.log2(max(ref.count + cur_sorted.size, 1)) + 1))
    if high <= low:
        return np.array([low - 0.5, low + 0.5])
    return np.linspace(low, high, bins + 1)


def column_histograms(
    reference: Profile, current: pd.DataFrame, column: str, bins: int | None = None
) -> tuple[list, np.ndarray, np.ndarray]:
    """(bin edges or categories, reference counts, current counts) of ``column`` on the same bins.

    Numeric columns with <= 20 distinct reference values and categorical columns give their
    categories (reference first, then new ones); other numeric columns give ``bins`` + 1 edges
    (default: Sturges, the bins js uses). Reference counts are scaled to the reference's rows,
    estimated from its sample when the profile keeps a quantile summary; profiles without a
    sample give their decile bins, with the outer edges at the two sides' min and max.
    """
    if column not in reference.columns:
        raise DriftError(f"column {column!r} is not in the reference profile")
    if column not in current.columns:
        raise DriftError(f"column {column!r} is missing from the current data")
    ref, series = reference.columns[column], current[column]
    if ref.kind == "categorical" or ref.discrete_values is not None:
        cur = np.sort(finite_values(series)) if ref.kind == "numeric" else None
        keys, ref_counts, cur_counts = _counts(ref, series, cur)
        return keys, ref_counts, cur_counts
    cur = np.sort(finite_values(series))
    if ref.sample is None:
        outer = numeric_edges(ref, cur)
        edges = np.array([outer[0], *(ref.edges or []), outer[-1]])
        return edges.tolist(), np.asarray(ref.bin_counts, "float64"), numeric_bin_counts(cur, ref.edges or [])
    edges = numeric_edges(ref, cur, bins)
    sample = np.asarray(ref.sample, dtype="float64")
    ref_counts = np.histogram(sample, edges)[0] * (ref.count / max(sample.size, 1))
    return edges.tolist(), ref_counts, np.histogram(cur, edges)[0].astype("float64")
