"""Speed and verdicts of llmops.tabular.drift against Evidently's DataDriftPreset on the same tables.

    python bench/drift.py                                   # 1M current rows x 20 columns
    python bench/drift.py --rows 200000 --reference-rows 50000
    python bench/drift.py --skip-evidently                  # llmops.tabular.drift only
    python bench/drift.py --rows 20000 --reference-rows 5000   # a smoke run (tests/integration)

Needs the bench extra (`pip install -c constraints.txt -e ".[bench]"`) for Evidently; without it,
the Evidently side is skipped, and said so.
Two scenarios share one current table (12 numeric and 8 categorical columns; 7 shifted in
mean, scale, proportions or by a new category, 2 by too little to count): a large reference
(auto picks Wasserstein / Jensen-Shannon) and a 1,000-row reference (KS / chi-square / Z). Each side
gets the same reference and current frames and, per column, the test llmops.tabular.drift chose,
forced in Evidently where Evidently allows it for the column type (its chi-square and
Z-test are categorical-only: on few-valued numeric columns Evidently is left on auto, and
the bench checks that it resolves to the same test). llmops.tabular.drift's time includes building
the reference profile. Prints, per scenario, both timings, their ratio, and every column
whose test or verdict differs; exits 1 when any does.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
import warnings

import numpy as np
import pandas as pd

from llmops.tabular.data import TableSchema
from llmops.tabular.drift import detect_drift
from llmops.tabular.profile import build_profile

# llmops test name -> Evidently stattest name
EVIDENTLY_NAMES = {
    "ks": "ks",
    "wasserstein": "wasserstein",
    "chi2": "chisquare",
    "z": "z",
    "js": "jensenshannon",
}
SHIFTED = {"n1", "n2", "n4", "n9", "c1", "c4", "c6"}  # plus n7 and c7: shifts too small to count


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="Rows of the current table.")
    parser.add_argument(
        "--reference-rows", type=int, default=200_000, help="Rows of the large reference (> 1000)."
    )
    parser.add_argument(
        "--small-reference-rows", type=int, default=1_000, help="Rows of the small reference (<= 1000)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the generated tables.")
    parser.add_argument("--skip-evidently", action="store_true", help="Time llmops.tabular.drift alone.")
    return parser.parse_args(argv)


def make_table(rng: np.random.Generator, n: int, shifted: bool) -> pd.DataFrame:
    """12 numeric and 8 categorical columns; with ``shifted``, the SHIFTED ones (and two tiny shifts)."""
    s = shifted

    def cats(labels: list[str], p: list[float] | None = None) -> np.ndarray:
        codes = rng.choice(len(labels), n, p=p)
        return np.asarray(labels, dtype=object)[codes]

    five = [f"v{i}" for i in range(5)]
    zipf = np.arange(1, 21) ** -1.1
    table = {
        "n0": rng.normal(0, 1, n),
        "n1": rng.normal(0.5 if s else 0, 1, n),  # mean shift
        "n2": rng.normal(0, 1.5 if s else 1, n),  # scale change
        "n3": rng.exponential(1, n),
        "n4": rng.exponential(1.3 if s else 1, n),
        "n5": rng.uniform(0, 1, n),
        "n6": rng.lognormal(0, 0.5, n),
        "n7": rng.normal(0.02 if s else 0, 1, n),  # too small to matter
        "n8": rng.integers(0, 4, n).astype("float64"),  # few values: tested as categories
        "n9": rng.choice(4, n, p=[0.1, 0.2, 0.3, 0.4] if s else [0.25] * 4).astype("float64"),
        "n10": rng.integers(0, 2, n).astype("float64"),
        "n11": np.where(rng.random(n) < 0.05, np.nan, rng.normal(100, 10, n)),
        "c0": cats(five),
        "c1": cats([*five, "new"], [0.18] * 5 + [0.1]) if s else cats(five),  # new category
        "c2": cats([f"z{i}" for i in range(20)], list(zipf / zipf.sum())),
        "c3": cats(["yes", "no"]),
        "c4": cats(["yes", "no"], [0.7, 0.3] if s else [0.5, 0.5]),  # binary share
        "c5": cats([f"w{i}" for i in range(30)]),
        "c6": cats(["a", "b", "c"], [0.6, 0.2, 0.2] if s else [0.4, 0.3, 0.3]),
        "c7": cats([f"k{i}" for i in range(10)], [0.104] * 5 + [0.096] * 5 if s else None),
    }
    frame = pd.DataFrame(table)
    frame.loc[rng.random(n) < 0.02, "c7"] = None
    return frame


def run_llmops(reference: pd.DataFrame, current: pd.DataFrame, schema: TableSchema):
    start = time.perf_counter()
    profile = build_profile(reference, schema)
    profiled = time.perf_counter()
    report = detect_drift(profile, current)
    done = time.perf_counter()
    return report, profiled - start, done - profiled


def run_evidently(reference: pd.DataFrame, current: pd.DataFrame, schema: TableSchema, tests: dict):
    from evidently import DataDefinition, Dataset, Report
    from evidently.legacy.calculations.stattests.registry import (
        StatTestInvalidFeatureTypeError,
        get_registered_stattest,
    )
    from evidently.legacy.core import ColumnType
    from evidently.presets import DataDriftPreset

    methods, thresholds = {}, {}
    for column, (test, threshold) in tests.items():
        kind = ColumnType.Numerical if schema.features[column] == "numeric" else ColumnType.Categorical
        thresholds[column] = threshold
        try:
            get_registered_stattest(EVIDENTLY_NAMES[test], kind)
        except StatTestInvalidFeatureTypeError:
            continue  # e.g. chi-square on a few-valued numeric column: only auto picks it
        methods[column] = EVIDENTLY_NAMES[test]
    definition = DataDefinition(numerical_columns=schema.numeric, categorical_columns=schema.categorical)
    start = time.perf_counter()
    snapshot = Report(
        [DataDriftPreset(per_column_method=methods, per_column_threshold=thresholds)], include_tests=True
    ).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    elapsed = time.perf_counter() - start
    result = snapshot.dict()
    by_display = {}  # auto-resolved methods come back by display name ("chi-square p_value")
    for name in EVIDENTLY_NAMES.values():
        for kind in (ColumnType.Numerical, ColumnType.Categorical):
            try:
                by_display[get_registered_stattest(name, kind).display_name] = name
            except StatTestInvalidFeatureTypeError:
                pass
    resolved = {
        m["config"]["column"]: by_display.get(m["config"]["method"], m["config"]["method"])
        for m in result["metrics"]
        if m["config"]["type"].endswith("ValueDrift")
    }
    verdicts = {
        t["name"].removeprefix("Value Drift for column "): str(t["status"]).endswith("FAIL")
        for t in result["tests"]
        if t["name"].startswith("Value Drift for column ")
    }
    return verdicts, resolved, elapsed


def scenario(name: str, reference: pd.DataFrame, current: pd.DataFrame, schema, args) -> bool:
    report, profile_s, detect_s = run_llmops(reference, current, schema)
    ours = profile_s + detect_s
    print(
        f"\n== {name}: reference {len(reference):,} rows, current {len(current):,} rows x {current.shape[1]}"
    )
    print(f"llmops.tabular.drift  {ours:7.2f} s  (profile {profile_s:.2f} s + detect {detect_s:.2f} s)")
    by_column = {c.column: c for c in report.columns}
    flagged = set(report.drifted_columns)
    print(
        f"  drifted: {sorted(flagged)}; share {report.drifted_share:.2f}, "
        f"dataset_drifted {report.dataset_drifted}"
    )
    print(f"  missed shifted: {sorted(SHIFTED - flagged)}; flagged unshifted: {sorted(flagged - SHIFTED)}")
    if args.skip_evidently:
        return True
    tests = {c.column: (c.statistic, c.threshold) for c in report.columns}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        verdicts, resolved, theirs = run_evidently(reference, current, schema, tests)
    print(f"Evidently     {theirs:7.2f} s  DataDriftPreset, same test per column")
    print(f"speed-up      {theirs / ours:7.1f} x  (detect only: {theirs / detect_s:.1f} x)")
    differ = [
        c
        for c in by_column
        if verdicts.get(c) != by_column[c].drifted
        or resolved.get(c) != EVIDENTLY_NAMES[by_column[c].statistic]
    ]
    print(f"verdicts      {len(by_column) - len(differ)}/{len(by_column)} columns agree (test and verdict)")
    for column in differ:
        c = by_column[column]
        print(
            f"  {column}: llmops {c.statistic} {c.value:.4g} drifted={c.drifted}; "
            f"evidently {resolved.get(column)} drifted={verdicts.get(column)}"
        )
    print("  tests: " + " ".join(f"{c}:{by_column[c].statistic}" for c in by_column))
    return not differ


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.skip_evidently and importlib.util.find_spec("evidently") is None:
        print("Evidently is not installed (the bench extra): its baseline is skipped")
        args.skip_evidently = True
    rng = np.random.default_rng(args.seed)
    current = make_table(rng, args.rows, shifted=True)
    large = make_table(rng, args.reference_rows, shifted=False)
    small = make_table(rng, args.small_reference_rows, shifted=False)
    schema = TableSchema(
        target="y",
        features={c: ("numeric" if c.startswith("n") else "categorical") for c in current.columns},
    )
    agree = scenario("large reference", large, current, schema, args)
    agree &= scenario("small reference", small, current, schema, args)
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
