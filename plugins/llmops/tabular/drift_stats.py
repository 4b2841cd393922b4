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
_KS_EXACT_MAX = 10_000  # scipy's ks_2samp (method auto) is exact up to this many points a side


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
    if grid.size == 0:
        return 0.0, 0.0
    weights = np.ones(ref_sorted.size) if ref_weights is None else np.asarray(ref_weights, "float64")
    ref_cdf = np.r_[0.0, np.cumsum(weights)] / weights.sum()
    ref_at, cur_at = _counts_at_or_below(grid, ref_sorted, cur_sorted)
    gap = np.abs(ref_cdf[ref_at[:-1]] - cur_at[:-1] / cur_sorted.size)
    return float(gap.max(initial=0.0)), float(np.sum(gap * np.diff(grid)))


def _counts_at_or_below(
    grid: np.ndarray, ref_sorted: np.ndarray, cur_sorted: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """How many reference and current points are <= each point of ``grid``, their merge. The
    same integers as a binary search of every grid point in both samples, read off the merge in
    linear passes instead: the searches were most of the time of a 1M-row window."""
    is_ref = np.zeros(grid.size, dtype=bool)
    # ref[i] sits after the i reference points before it and the current points below it
    is_ref[np.arange(ref_sorted.size) + np.searchsorted(cur_sorted, ref_sorted, side="left")] = True
    ref_upto = np.cumsum(is_ref)
    ends = np.flatnonzero(np.r_[grid[1:] != grid[:-1], True])  # last index of each run of equal values
    if ends.size == grid.size:
        return ref_upto, np.arange(1, grid.size + 1) - ref_upto
    ends = np.repeat(ends, np.diff(ends, prepend=-1))  # a point also counts the equal ones after it
    ref_at = ref_upto[ends]
    return ref_at, ends + 1 - ref_at


def _ks_distance(ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> float:
    """scipy ks_2samp's D, max |F_ref - F_cur| over both samples' points, from the same integer
    counts and float operations, but searching only the smaller sample's points: between two
    of them the larger sample's CDF only rises, so the gap there peaks at its first or last point."""
    small, large = sorted((ref_sorted, cur_sorted), key=np.size)  # |a - b| == |b - a| exactly
    ns, nl = small.size, large.size
    below = np.searchsorted(large, small, side="left")
    at_small = (
        np.searchsorted(small, small, side="right") / ns - np.searchsorted(large, small, side="right") / nl
    )
    lo, hi = np.r_[0, below], np.r_[below, nl]  # large points with k small points <= them, k = 0..ns
    k = np.flatnonzero(hi > lo)
    first = np.searchsorted(large, large[lo[k]], side="right")
    in_gaps = np.r_[k / ns - first / nl, k / ns - hi[k] / nl]
    return float(max(np.abs(at_small).max(initial=0.0), np.abs(in_gaps).max(initial=0.0)))


def ks_test(
    ref_sorted: np.ndarray,
    cur_sorted: np.ndarray,
    ref_rows: int | None = None,
    ref_weights: np.ndarray | None = None,
) -> tuple[float, float]:
    """(D, p-value). With ``ref_rows`` > len(ref_sorted) or ``ref_weights``, the reference points
    summarize ``ref_rows`` rows: D from the summary, p asymptotic (scipy's form) with the true size."""
    from scipy import stats

    whole = ref_weights is None and ref_rows in (None, ref_sorted.size)
    sizes = (ref_sorted.size, cur_sorted.size)
    if whole and (max(sizes) <= _KS_EXACT_MAX or min(sizes) == 0):  # empty: scipy warns, gives NaN
        result = stats.ks_2samp(ref_sorted, cur_sorted)
        return float(result.statistic), float(result.pvalue)
    # above it ks_2samp is asymptotic: the same D and p without its re-sort and searches of
    # every point, which cost about 0.1 s a column on a 1M-row window
    d = _ks_distance(ref_sorted, cur_sorted) if whole else cdf_gap(ref_sorted, cur_sorted, ref_weights)[0]
    n, m = sorted((float(ref_sorted.size if whole else ref_rows), float(cur_sorted.size)), reverse=True)
    return d, float(np.clip(stats.kstwo.sf(d, np.round(n * m / (n + m))), 0, 1))  # scipy's asymptotic form


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
