import json

import numpy as np
import pandas as pd
import pytest

from llmops.gates import PolicyError, parse_policy
from llmops.tabular.data import TableSchema
from llmops.tabular.drift import (
    DriftError,
    DriftRule,
    column_histograms,
    compare_to_profile,
    detect_drift,
    psi,
)
from llmops.tabular.profile import Profile, build_profile

SCHEMA = TableSchema(target="y", features={"x": "numeric", "c": "categorical"})
WIDE = TableSchema(
    target="y",
    features={"x": "numeric", "e": "numeric", "c": "categorical", "b": "categorical"},
)


def table(rng, n=4000, shift=0.0, scale=1.0, cats=("a", "b", "c")):
    return pd.DataFrame({"x": rng.normal(shift, scale, n), "c": rng.choice(cats, n)})


def wide(rng, n):
    return pd.DataFrame(
        {
            "x": rng.normal(0, 1, n),
            "e": rng.exponential(1, n),
            "c": rng.choice(list("abcd"), n, p=[0.4, 0.3, 0.2, 0.1]),
            "b": rng.choice(["yes", "no"], n),
        }
    )


def by_column(report):
    return {c.column: c for c in report.columns}


def test_psi_is_zero_for_identical_histograms_and_grows_with_shift():
    same = psi(np.array([10, 20, 30]), np.array([1, 2, 3]))
    small = psi(np.array([10, 20, 30]), np.array([12, 20, 28]))
    large = psi(np.array([10, 20, 30]), np.array([30, 20, 10]))
    assert same == 0.0
    assert 0 < small < large


def test_same_distribution_does_not_drift():
    rng = np.random.default_rng(0)
    reference = build_profile(table(rng), SCHEMA)
    report = compare_to_profile(reference, table(rng))
    assert report.drifted_columns == [] and not report.dataset_drifted


@pytest.mark.parametrize("reference_rows", [800, 4000])
def test_mean_shift_scale_change_and_new_category_drift(reference_rows):
    rng = np.random.default_rng(1)
    reference = build_profile(table(rng, reference_rows), SCHEMA)
    assert "x" in detect_drift(reference, table(rng, shift=1.0)).drifted_columns
    assert "x" in detect_drift(reference, table(rng, scale=3.0)).drifted_columns
    new_cats = detect_drift(reference, table(rng, cats=("a", "z")))
    assert "c" in new_cats.drifted_columns
    assert "1 new categories" in by_column(new_cats)["c"].detail and "'z'" in by_column(new_cats)["c"].detail
    if reference_rows > 1000:  # distances do not alarm on noise: the report names exactly the shifted one
        assert detect_drift(reference, table(rng, shift=1.0)).drifted_columns == ["x"]
        assert new_cats.drifted_columns == ["c"]


def test_unshifted_traffic_rarely_alarms_over_20_seeds():
    """At most 1 dataset-level false alarm in 20; per-column counts are printed (pytest -s)."""
    for reference_rows in (800, 5000):
        dataset_alarms, column_alarms = 0, dict.fromkeys(WIDE.features, 0)
        for seed in range(20):
            rng = np.random.default_rng(seed)
            report = detect_drift(build_profile(wide(rng, reference_rows), WIDE), wide(rng, 4000))
            dataset_alarms += report.dataset_drifted
            for column in report.drifted_columns:
                column_alarms[column] += 1
        tests = {c.column: c.statistic for c in report.columns}
        counts = {f"{c} ({tests[c]})": n for c, n in column_alarms.items()}
        print(f"reference {reference_rows}: dataset false alarms {dataset_alarms}/20; per column {counts}")
        assert dataset_alarms <= 1, counts
        if reference_rows > 1000:
            assert sum(column_alarms.values()) == 0
        else:  # ks and z hold their 5% level; Evidently's chi-square goodness of fit does not
            assert column_alarms["x"] <= 4 and column_alarms["e"] <= 4 and column_alarms["b"] <= 4


def test_evidently_chi2_overalarms_where_the_homogeneity_test_holds_its_level():
    gof = homogeneity = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        reference = build_profile(wide(rng, 800), WIDE)
        current = wide(rng, 8000)
        gof += "c" in detect_drift(reference, current).drifted_columns
        homogeneity += (
            "c" in detect_drift(reference, current, DriftRule(method="chi2_homogeneity")).drifted_columns
        )
    assert gof >= 8 and homogeneity <= 3


def test_default_tests_follow_evidently_rules_by_reference_size_and_distinct_values():
    rng = np.random.default_rng(3)
    schema = TableSchema(
        target="y",
        features={
            "x": "numeric",
            "few": "numeric",
            "two": "numeric",
            "c": "categorical",
            "b": "categorical",
        },
    )

    def frame(n):
        return pd.DataFrame(
            {
                "x": rng.normal(size=n),
                "few": rng.integers(0, 4, n),
                "two": rng.integers(0, 2, n),
                "c": rng.choice(list("abc"), n),
                "b": rng.choice(["yes", "no"], n),
            }
        )

    small = detect_drift(build_profile(frame(1000), schema), frame(3000))
    large = detect_drift(build_profile(frame(1001), schema), frame(3000))
    assert {c.column: c.statistic for c in small.columns} == {
        "x": "ks",
        "few": "chi2",
        "two": "z",
        "c": "chi2",
        "b": "z",
    }
    assert {c.column: c.statistic for c in large.columns} == {
        "x": "wasserstein",
        "few": "js",
        "two": "js",
        "c": "js",
        "b": "js",
    }
    ks, wasserstein = by_column(small)["x"], by_column(large)["x"]
    assert ks.threshold == 0.05 and ks.p_value == ks.value and "<= 1000" in ks.detail
    assert wasserstein.threshold == 0.1 and wasserstein.p_value is None and "> 1000" in wasserstein.detail


def test_policy_overrides_method_thresholds_per_column_and_share():
    rng = np.random.default_rng(4)
    reference = build_profile(wide(rng, 4000), WIDE)
    current = wide(rng, 4000).assign(x=lambda f: f.x + 0.08)  # normed Wasserstein ~0.08: under 0.1
    policy = parse_policy(
        """
model: clf
drift:
  method: psi
  threshold: 0.3
  per_column:
    x: {method: wasserstein, threshold: 0.05}
    c: {method: chi2_homogeneity}
  max_drifted_share: 0.2
"""
    )
    report = detect_drift(reference, current, policy.drift)
    columns = by_column(report)
    assert (columns["x"].statistic, columns["x"].threshold, columns["x"].drifted) == (
        "wasserstein",
        0.05,
        True,
    )
    assert (columns["e"].statistic, columns["e"].threshold) == ("psi", 0.3)
    assert (columns["c"].statistic, columns["c"].threshold) == ("chi2_homogeneity", 0.05)
    assert report.drifted_share == 0.25 and report.dataset_drifted  # 1 of 4 > 0.2
    assert not detect_drift(reference, current).dataset_drifted

    tight = DriftRule(thresholds={"wasserstein": 0.05})
    assert by_column(detect_drift(reference, current, tight))["x"].drifted
    # a rule-level method applies where it fits: ks on numeric columns, auto elsewhere
    ks = by_column(detect_drift(reference, current, DriftRule(method="ks")))
    assert (ks["x"].statistic, ks["c"].statistic) == ("ks", "js")


def test_v1_policy_keeps_its_psi_test_and_the_train_flow_call_still_works():
    rng = np.random.default_rng(5)
    reference = build_profile(table(rng), SCHEMA)
    v1 = parse_policy("model: clf\ndrift: {max_psi: 0.25, max_drifted_share: 0.5}").drift
    assert v1.method == "psi"
    assert parse_policy("model: clf\ndrift: {method: auto, max_psi: 0.25}").drift.method == "auto"
    for report in (
        detect_drift(reference, table(rng, shift=1.0), v1),
        compare_to_profile(reference, table(rng, shift=1.0), 0.25),
    ):
        assert [(c.statistic, c.threshold) for c in report.columns] == [("psi", 0.25)] * 2
        assert report.drifted_columns == ["x"]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("{threshold: 0.1}", r"drift: .*a threshold needs a method"),
        ("{method: ks, threshold: 5}", r"p-value level"),
        ("{per_column: {x: {threshold: 0.2}}}", r"drift\.per_column\.x: .*a threshold needs a method"),
        ("{method: kolmogorov}", r"drift\.method: Input should be 'auto'"),
        ("{thresholds: {chi2: 2}}", r"p-value level"),
        ("{max_psi: -1}", r"drift\.max_psi: Input should be greater than 0"),
    ],
)
def test_bad_drift_sections_name_the_field(section, message):
    with pytest.raises(PolicyError, match=message):
        parse_policy(f"model: clf\ndrift: {section}")


def test_a_test_forced_on_a_column_it_cannot_test_is_an_error_naming_it():
    rng = np.random.default_rng(6)
    reference = build_profile(table(rng), SCHEMA)
    with pytest.raises(DriftError, match=r"drift\.per_column\.c\.method: 'ks' cannot test .* column 'c'"):
        detect_drift(reference, table(rng), DriftRule(per_column={"c": {"method": "ks"}}))
    with pytest.raises(DriftError, match=r"'z' cannot test .* 'c' \(3 distinct values\)"):
        detect_drift(reference, table(rng), DriftRule(per_column={"c": {"method": "z"}}))


def test_missing_column_and_all_nan_column_are_explicit():
    rng = np.random.default_rng(2)
    reference = build_profile(table(rng), SCHEMA)
    current = table(rng).drop(columns=["c"]).assign(x=np.nan)
    report = by_column(compare_to_profile(reference, current))
    assert report["c"].drifted and "missing" in report["c"].detail and report["c"].value is None
    assert not report["x"].drifted and "no non-missing values" in report["x"].detail
    assert report["x"].value is None and report["x"].statistic == "none"


def test_empty_window_and_unusable_values_are_not_measured_and_do_not_count():
    rng = np.random.default_rng(7)
    reference = build_profile(table(rng), SCHEMA)
    empty = detect_drift(reference, table(rng).iloc[:0])
    assert empty.drifted_share == 0.0 and not empty.dataset_drifted
    assert empty.unmeasured_columns == ["x", "c"]
    assert all("no non-missing values in the current data" in c.detail for c in empty.columns)
    # text in a numeric column and infinities are not values; the share counts measured columns only
    garbage = table(rng, cats=("a", "z")).assign(x=["n/a"] * 3999 + [np.inf])
    report = detect_drift(reference, garbage)
    assert report.unmeasured_columns == ["x"] and report.drifted_share == 1.0 and report.dataset_drifted
    blank = build_profile(table(rng).assign(x=np.nan), SCHEMA)
    assert "no non-missing values in the reference" in by_column(detect_drift(blank, table(rng)))["x"].detail


def test_profile_written_before_the_sample_falls_back_to_psi_with_a_note():
    rng = np.random.default_rng(8)
    stored = json.loads(build_profile(table(rng), SCHEMA).model_dump_json())
    for column in stored["columns"].values():
        for key in ("sample", "discrete_values", "discrete_counts"):
            column.pop(key)
    old = Profile.model_validate(stored)
    report = by_column(detect_drift(old, table(rng, shift=1.0)))
    assert report["x"].statistic == "psi" and report["x"].drifted
    assert "psi instead of wasserstein" in report["x"].detail and "older profile" in report["x"].detail
    assert report["c"].statistic == "js"  # categorical counts were always kept


def test_profile_keeps_a_bounded_sample_and_exact_counts_of_few_values():
    rng = np.random.default_rng(9)
    frame = pd.DataFrame({"x": rng.normal(size=20_000), "k": rng.integers(0, 3, 20_000), "c": "a"})
    schema = TableSchema(target="y", features={"x": "numeric", "k": "numeric", "c": "categorical"})
    profile = Profile.model_validate_json(build_profile(frame, schema, sample_size=1000).model_dump_json())
    x, k = profile.columns["x"], profile.columns["k"]
    assert len(x.sample) == 1000 and x.sample == sorted(x.sample) and not x.sample_is_exact
    assert x.discrete_values is None
    assert k.discrete_values == [0.0, 1.0, 2.0] and sum(k.discrete_counts) == 20_000
    small = build_profile(frame.head(500), schema, sample_size=1000).columns["x"]
    assert small.sample_is_exact and small.sample == sorted(frame.x.head(500).tolist())


def test_column_histograms_share_bins_for_plotting():
    rng = np.random.default_rng(10)
    reference = build_profile(table(rng), SCHEMA)
    current = table(rng, shift=0.5, cats=("a", "z"))
    edges, ref_counts, cur_counts = column_histograms(reference, current, "x", bins=12)
    assert len(edges) == 13 and ref_counts.shape == cur_counts.shape == (12,)
    assert ref_counts.sum() == pytest.approx(4000) and cur_counts.sum() == 4000
    assert edges[0] <= min(current.x.min(), reference.columns["x"].min)
    categories, ref_counts, cur_counts = column_histograms(reference, current, "c")
    assert categories[-1] == "z" and ref_counts[-1] == 0 and cur_counts[categories.index("b")] == 0
    with pytest.raises(DriftError, match="'nope' is not in the reference"):
        column_histograms(reference, current, "nope")


def test_the_drift_figure_draws_the_bins_the_drift_tests_use():
    import json

    from metaflow_extensions.llmops.plugins.cards.llmops_cards.figures import drift_figure

    rng = np.random.default_rng(11)
    reference = build_profile(table(rng), SCHEMA)
    current = table(rng, shift=0.5, cats=("a", "z"))
    figure = drift_figure(reference, current, ["x", "c"], drifted={"x"})
    json.dumps(figure)  # a Vega-Lite spec of plain values, as the card stores it
    numeric, categorical = figure["concat"]
    edges, _, cur_counts = column_histograms(reference, current, "x")
    drawn = [row for row in numeric["data"]["values"] if row["series"] == "current"]
    # one binning, not a second copy: the drawn bins are the drift test's, each holding its share
    assert np.allclose([row["x0"] for row in drawn] + [drawn[-1]["x1"]], edges)
    shares = [row["density"] * width for row, width in zip(drawn, np.diff(edges), strict=True)]
    assert np.allclose(shares, cur_counts / cur_counts.sum())
    assert numeric["title"]["text"].startswith("DRIFT")
    categories, _, _ = column_histograms(reference, current, "c")
    assert categorical["encoding"]["x"]["sort"] == [str(k) for k in categories]
    empty = drift_figure(reference, current.assign(x=np.nan), ["x"], drifted=set())
    assert empty["concat"][0]["data"]["values"] == [{"note": "no current values"}]
