"""Two-sample drift statistics on sorted samples and count vectors: numpy/scipy, no pandas.

Each function takes the reference first. Samples are sorted float64 arrays; counts are
histograms over the same bins or categories (a bin may be empty on one side, not on both).
``llmops.tabular.drift`` picks among them per column; the definitions follow Evidently 0.7's
stattests (ks, wasserstein, chisquare, z, jensenshannon) where it has one.
"""

from __future__ import annotations

import numpy as np

# scipy is imported inside the tests that use it: flows load this module (through the gate
# policy's drift section) in every task and card process, and scipy costs a second in each.

_EPS = 1e-4  # floor for empty PSI bins, so log(0) never happens


def psi(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Population stability index of two histograms over the same bins."""
    ref = np.asarray(reference_counts, dtype="float64")
    cur = np.asarray(current_counts, dtype="float64")
    if ref.sum() == 0 or cur.sum() == 0:
        return float("nan")
    p = np.clip(ref / ref.sum(), _EPS, None)
    q = np.clip(cur / cur.sum(), _EPS, None)
    return float(np.sum((q - p) * np.log(q / p)))


def cdf_gap(
    ref_sorted: np.ndarray, cur_sorted: np.ndarray, ref_weights: np.ndarray | None = None
) -> tuple[float, float]:
    """(KS statistic D, Wasserstein-1 distance) of two sorted samples; the reference's points
    weigh ``ref_weights`` (e.g. the counts of distinct values) or all the same."""
    # both sorted: a stable sort of the concatenation is a linear merge (timsort)
    grid = np.sort(np.concatenate([ref_sorted, cur_sorted]), kind="stable")
    weights = np.ones(ref_sorted.size) if ref_weights is None else np.asarray(ref_weights, "float64")
    ref_cdf = np.r_[0.0, np.cumsum(weights)] / weights.sum()
    gap = np.abs(
        ref_cdf[np.searchsorted(ref_sorted, grid[:-1], side="right")]
        - np.searchsorted(cur_sorted, grid[:-1], side="right") / cur_sorted.size
    )
    return float(gap.max(initial=0.0)), float(np.sum(gap * np.diff(grid)))


def ks_test(
    ref_sorted: np.ndarray,
    cur_sorted: np.ndarray,
    ref_rows: int | None = None,
    ref_weights: np.ndarray | None = None,
) -> tuple[float, float]:
    """(D, p-value). With ``ref_rows`` > len(ref_sorted) or ``ref_weights``, the reference points
    summarize ``ref_rows`` rows: D from the summary, p asymptotic (scipy's form) with the true size."""
    from scipy import stats

    if ref_weights is None and ref_rows in (None, ref_sorted.size):
        result = stats.ks_2samp(ref_sorted, cur_sorted)
        return float(result.statistic), float(result.pvalue)
    d, _ = cdf_gap(ref_sorted, cur_sorted, ref_weights)
    n, m = sorted((float(ref_rows), float(cur_sorted.size)), reverse=True)
    return d, float(stats.kstwo.sf(d, np.round(n * m / (n + m))))  # scipy's asymptotic form


def chi2_test(reference_counts: np.ndarray, current_counts: np.ndarray) -> tuple[float, float]:
    """(statistic, p-value) of current counts against reference proportions (Evidently's form)."""
    from scipy import stats

    ref = np.asarray(reference_counts, dtype="float64")
    cur = np.asarray(current_counts, dtype="float64")
    expected = ref * (cur.sum() / ref.sum())
    if np.any(cur[expected == 0] > 0):
        return float("inf"), 0.0
    keep = expected > 0
    if keep.sum() < 2:
        return 0.0, 1.0
    statistic = float(np.sum((cur[keep] - expected[keep]) ** 2 / expected[keep]))
    return statistic, float(stats.chi2.sf(statistic, keep.sum() - 1))


def chi2_homogeneity_test(reference_counts: np.ndarray, current_counts: np.ndarray) -> tuple[float, float]:
    """(statistic, p-value) of the two-sample chi-square test: are both rows of the 2 x k table alike?"""
    from scipy import stats

    table = np.array([reference_counts, current_counts], dtype="float64")
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 0.0, 1.0
    result = stats.chi2_contingency(table, correction=False)
    return float(result.statistic), float(result.pvalue)


def z_test(reference_counts: np.ndarray, current_counts: np.ndarray) -> tuple[float, float]:
    """(z, two-sided p-value) of the share of the second category on both sides (<= 2 categories)."""
    from scipy import stats

    ref = np.asarray(reference_counts, dtype="float64")
    cur = np.asarray(current_counts, dtype="float64")
    if ref.size < 2:
        return 0.0, 1.0
    n1, n2 = ref.sum(), cur.sum()
    pooled = (ref[1] + cur[1]) / (n1 + n2)
    z = (ref[1] / n1 - cur[1] / n2) / np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return float(z), float(2 * stats.norm.sf(abs(z)))


def js_distance(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Jensen–Shannon distance (natural log) of two histograms over the same bins."""
    from scipy import special

    p = np.asarray(reference_counts, dtype="float64")
    q = np.asarray(current_counts, dtype="float64")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    return float(np.sqrt(max(0.5 * (special.rel_entr(p, m).sum() + special.rel_entr(q, m).sum()), 0.0)))
