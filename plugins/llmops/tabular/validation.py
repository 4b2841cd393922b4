"""Data validation: every rule reports the column it checked, its measured value and its limit.

A failed rule is an error that names the column and the rule, e.g.
``column 'age': rule 'max_missing_share': 0.42 missing > limit 0.2``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel

from llmops.tabular.data import DataError, TableSchema
from llmops.tabular.rules import DataRules


class CheckResult(BaseModel):
    rule: str
    column: str | None
    value: float | str
    limit: float | str
    passed: bool


class ValidationReport(BaseModel):
    rows: int
    checks: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def describe_failures(self) -> str:
        return "; ".join(
            f"{'column ' + repr(c.column) + ': ' if c.column else ''}rule {c.rule!r}: "
            f"{c.value} (limit {c.limit})"
            for c in self.failures
        )


class DataValidationFailed(DataError):
    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(f"data validation failed: {report.describe_failures()}")


def validate_table(frame: pd.DataFrame, schema: TableSchema, rules: DataRules) -> ValidationReport:
    """Check types, missing values, ranges, duplicate rows and class balance."""
    checks: list[CheckResult] = []

    def check(rule: str, column: str | None, value, limit, passed: bool) -> None:
        if isinstance(value, float | np.floating):
            value = round(float(value), 4)
        checks.append(CheckResult(rule=rule, column=column, value=value, limit=limit, passed=passed))

    rows = len(frame)
    check("min_rows", None, rows, rules.min_rows, rows >= rules.min_rows)

    for column, rule in rules.columns.items():
        if rule.required and column not in frame.columns:
            check("required", column, "missing", "present", False)

    for column, kind in schema.features.items():
        values = frame[column]
        missing = float(values.isna().mean()) if rows else 0.0
        check(
            "max_missing_share",
            column,
            missing,
            rules.max_missing_share,
            missing <= rules.max_missing_share,
        )
        if kind == "numeric":
            numeric = pd.to_numeric(values, errors="coerce")
            bad_type = int((numeric.isna() & values.notna()).sum())
            check("numeric_type", column, bad_type, 0, bad_type == 0)
            infinite = int(np.isinf(numeric.to_numpy(dtype="float64", na_value=np.nan)).sum())
            check("finite", column, infinite, 0, infinite == 0)
        rule = rules.columns.get(column)
        if rule is None:
            continue
        if rule.min is not None or rule.max is not None:
            numeric = pd.to_numeric(values, errors="coerce")
            low, high = numeric.min(), numeric.max()
            if rule.min is not None:
                check("min", column, low, rule.min, bool(pd.isna(low) or low >= rule.min))
            if rule.max is not None:
                check("max", column, high, rule.max, bool(pd.isna(high) or high <= rule.max))
        if rule.allowed is not None:
            unknown = sorted(set(values.dropna().astype(str)) - set(rule.allowed))
            check("allowed", column, ", ".join(unknown[:5]) or "none", "none", not unknown)

    duplicates = float(frame.duplicated().mean()) if rows else 0.0
    check(
        "max_duplicate_share",
        None,
        duplicates,
        rules.max_duplicate_share,
        duplicates <= rules.max_duplicate_share,
    )

    target = frame[schema.target]
    missing_target = int(target.isna().sum())
    check("target_not_missing", schema.target, missing_target, 0, missing_target == 0)
    shares = target.astype(str).value_counts(normalize=True)
    check("min_classes", schema.target, len(shares), 2, len(shares) >= 2)
    if len(shares):
        check(
            "min_class_share",
            schema.target,
            float(shares.min()),
            rules.min_class_share,
            float(shares.min()) >= rules.min_class_share,
        )
    return ValidationReport(rows=rows, checks=checks)
