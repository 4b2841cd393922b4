import numpy as np
import pandas as pd

from llmops.data import TableSchema
from llmops.drift import compare_to_profile, psi
from llmops.profile import build_profile

SCHEMA = TableSchema(target="y", features={"x": "numeric", "c": "categorical"})


def table(rng, n=4000, shift=0.0, scale=1.0, cats=("a", "b", "c")):
    return pd.DataFrame({"x": rng.normal(shift, scale, n), "c": rng.choice(cats, n)})


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
    assert report.drifted_columns == []


def test_mean_shift_scale_change_and_new_category_drift():
    rng = np.random.default_rng(1)
    reference = build_profile(table(rng), SCHEMA)
    assert compare_to_profile(reference, table(rng, shift=1.0)).drifted_columns == ["x"]
    assert compare_to_profile(reference, table(rng, scale=3.0)).drifted_columns == ["x"]
    new_cats = compare_to_profile(reference, table(rng, cats=("a", "z")))
    assert new_cats.drifted_columns == ["c"]


def test_missing_column_and_all_nan_column_are_explicit():
    rng = np.random.default_rng(2)
    reference = build_profile(table(rng), SCHEMA)
    current = table(rng).drop(columns=["c"]).assign(x=np.nan)
    report = {c.column: c for c in compare_to_profile(reference, current).columns}
    assert report["c"].drifted and "missing" in report["c"].detail
    assert not report["x"].drifted and "no non-missing values" in report["x"].detail
