import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial import distance

from llmops.tabular.data import TableSchema
from llmops.tabular.drift import detect_drift
from llmops.tabular.drift_stats import cdf_gap, chi2_homogeneity_test, chi2_test, js_distance, ks_test, z_test
from llmops.tabular.profile import build_profile, value_sample


@pytest.fixture
def samples():
    rng = np.random.default_rng(0)
    return np.sort(rng.normal(0, 1, 700)), np.sort(rng.normal(0.1, 1.2, 3000))


def test_ks_and_wasserstein_match_scipy(samples):
    ref, cur = samples
    expected = stats.ks_2samp(ref, cur)
    assert ks_test(ref, cur) == pytest.approx((expected.statistic, expected.pvalue))
    d, w1 = cdf_gap(ref, cur)
    assert d == pytest.approx(expected.statistic)
    assert w1 == pytest.approx(stats.wasserstein_distance(ref, cur))


def test_weighted_reference_points_match_scipy_weights():
    rng = np.random.default_rng(1)
    values, counts = np.array([0.0, 1.0, 2.5]), np.array([50, 30, 20])
    cur = np.sort(rng.choice(values, 400, p=[0.3, 0.3, 0.4]))
    _, w1 = cdf_gap(values, cur, counts)
    assert w1 == pytest.approx(stats.wasserstein_distance(values, cur, u_weights=counts))
    d, p = ks_test(values, cur, ref_rows=100, ref_weights=counts)
    assert d == pytest.approx(stats.ks_2samp(np.repeat(values, counts), cur).statistic)
    assert 0 <= p < 0.05


def test_quantile_summary_of_a_large_reference_keeps_ks_and_wasserstein_close(samples):
    rng = np.random.default_rng(2)
    ref = np.sort(rng.normal(0, 1, 200_000))
    cur = np.sort(rng.normal(0.01, 1, 50_000))
    summary = value_sample(ref, 5000)
    exact_d, exact_p = stats.ks_2samp(ref, cur, method="asymp")
    d, p = ks_test(summary, cur, ref_rows=ref.size)
    assert abs(d - exact_d) <= 1 / 5000 and p == pytest.approx(exact_p, abs=0.05)
    assert cdf_gap(summary, cur)[1] == pytest.approx(stats.wasserstein_distance(ref, cur), rel=0.02)


def test_chi2_is_evidentlys_goodness_of_fit_and_a_new_category_gives_p_zero():
    ref, cur = np.array([40, 35, 25]), np.array([500, 300, 200])
    expected = stats.chisquare(cur, ref * cur.sum() / ref.sum())
    assert chi2_test(ref, cur) == pytest.approx((expected.statistic, expected.pvalue))
    assert chi2_test(np.array([40, 60, 0]), np.array([40, 50, 10]))[1] == 0.0
    assert chi2_test(np.array([10]), np.array([7])) == (0.0, 1.0)


def test_homogeneity_and_z_tests_agree_with_the_contingency_table():
    ref, cur = np.array([120, 80]), np.array([260, 240])
    table = stats.chi2_contingency(np.array([ref, cur]), correction=False)
    assert chi2_homogeneity_test(ref, cur) == pytest.approx((table.statistic, table.pvalue))
    z, p = z_test(ref, cur)
    assert z**2 == pytest.approx(table.statistic) and p == pytest.approx(table.pvalue)
    assert z_test(np.array([5]), np.array([9])) == (0.0, 1.0)


def test_js_distance_matches_scipy_natural_log():
    p, q = np.array([10, 0, 5, 5]), np.array([2, 8, 5, 0])
    assert js_distance(p, q) == pytest.approx(distance.jensenshannon(p, q))
    assert js_distance(p, p) == 0.0
    assert js_distance(np.array([1, 0]), np.array([0, 1])) == pytest.approx(np.sqrt(np.log(2)))


def test_same_tests_and_verdicts_as_evidently():
    """Evidently (bench extra) on the same frames, auto on both sides: same test, score, verdict."""
    pytest.importorskip("evidently")
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    names = {"ks": "ks", "wasserstein": "wasserstein", "chi2": "chisquare", "z": "z", "js": "jensenshannon"}
    rng = np.random.default_rng(3)
    schema = TableSchema(
        target="y",
        features={"x": "numeric", "few": "numeric", "c": "categorical", "b": "categorical"},
    )

    def frame(n, shift):
        return pd.DataFrame(
            {
                "x": rng.normal(shift, 1, n),
                "few": rng.choice(4, n, p=[0.25 - shift, 0.25, 0.25, 0.25 + shift]).astype(float),
                "c": rng.choice(list("abcd"), n, p=[0.25 + shift, 0.25 - shift, 0.25, 0.25]),
                "b": rng.choice(["yes", "no"], n, p=[0.5 + shift, 0.5 - shift]),
            }
        )

    for reference_rows, shift in ((600, 0.0), (600, 0.1), (3000, 0.0), (3000, 0.2)):
        reference, current = frame(reference_rows, 0.0), frame(2000, shift)
        for column in detect_drift(build_profile(reference, schema), current).columns:
            kind = (
                ColumnType.Numerical
                if schema.features[column.column] == "numeric"
                else ColumnType.Categorical
            )
            ref, cur = reference[column.column], current[column.column]
            test = get_stattest(ref, cur, kind, None)
            theirs = test(ref, cur, kind, None)
            assert names[column.statistic] == test.name, column.column
            assert column.value == pytest.approx(theirs.drift_score, rel=1e-6, abs=1e-12), column.column
            assert column.drifted == theirs.drifted, column.column
