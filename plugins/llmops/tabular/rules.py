"""The ``data:`` and ``drift:`` sections of a gate policy: what each rule asks, checked on load.

Pydantic only, no pandas or scipy: every flow parses its policy (a Metaflow ``Config``) in each
task and card process, so the rules load cheaply here, and the checks that apply them load their
numerics where they run (``llmops.tabular.validation``, ``llmops.tabular.drift``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmops.gates import PolicySection, RuleResult, not_applied_rule

# ---- data: --------------------------------------------------------------------------------------


class ColumnRule(BaseModel):
    """Expectations for one column; all optional."""

    model_config = ConfigDict(extra="forbid")

    min: float | None = None
    max: float | None = None
    allowed: list[str] | None = None
    required: bool = True


class DataRules(PolicySection):
    """The ``data:`` section of a gate policy (checked by the training flow's validate step)."""

    always: ClassVar[bool] = True  # every table is validated, with these defaults when not given

    min_rows: int = Field(default=30, ge=1)
    max_missing_share: float = Field(default=0.2, ge=0, le=1)
    max_duplicate_share: float = Field(default=0.05, ge=0, le=1)
    min_class_share: float = Field(default=0.02, ge=0, le=1)
    columns: dict[str, ColumnRule] = Field(default_factory=dict)


# ---- drift: -------------------------------------------------------------------------------------

Test = Literal["ks", "wasserstein", "chi2", "chi2_homogeneity", "z", "js", "psi"]
Method = Literal["auto", "ks", "wasserstein", "chi2", "chi2_homogeneity", "z", "js", "psi"]

DEFAULT_MAX_PSI = 0.2
DEFAULT_THRESHOLDS: dict[str, float] = {
    "ks": 0.05,  # p-value level
    "chi2": 0.05,
    "chi2_homogeneity": 0.05,
    "z": 0.05,
    "wasserstein": 0.1,  # distances: drift at or above
    "js": 0.1,
    "psi": DEFAULT_MAX_PSI,
}
P_VALUE_TESTS = frozenset({"ks", "chi2", "chi2_homogeneity", "z"})
SMALL_REFERENCE = 1000  # Evidently: up to this many reference rows, statistical tests; above, distances


def _check_threshold(method: str, threshold: float | None) -> None:
    if threshold is None:
        return
    if method == "auto":
        raise ValueError(
            "a threshold needs a method (auto mixes p-values and distances): give `method`, "
            "or per-test thresholds as `thresholds: {ks: 0.01, wasserstein: 0.2}`"
        )
    if method in P_VALUE_TESTS and not 0 < threshold < 1:
        raise ValueError(f"the {method} threshold is a p-value level: give a value in (0, 1)")


class ColumnDriftRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Method = "auto"
    threshold: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _threshold_fits(self) -> ColumnDriftRule:
        _check_threshold(self.method, self.threshold)
        return self


class DriftRule(PolicySection):
    """The ``drift:`` section of a policy: test per column, thresholds, the table's limit.

    Parameters
    ----------
    method : auto|ks|wasserstein|chi2|chi2_homogeneity|z|js|psi
        Test for every column it applies to (ks, wasserstein: numeric; chi2, chi2_homogeneity,
        z: categorical or numeric with <= 20 distinct values, z only with <= 2; js, psi: any);
        other columns use ``auto``.
    threshold : float, optional
        Threshold of ``method`` (not allowed with ``auto``).
    thresholds : dict
        Per-test thresholds replacing the defaults, e.g. ``{ks: 0.01, js: 0.2}``.
    max_psi : float
        Threshold of psi. A policy that names only ``max_psi`` (the first form of this
        section) keeps its PSI test: ``method`` then defaults to ``psi``.
    per_column : dict
        ``{column: {method, threshold}}``; a method that cannot test the column is an error.
    max_drifted_share : float
        The table drifted when more than this share of the measured columns did (the drift
        monitor's trigger for live traffic).
    max_training_drifted_share : float
        The gate's limit for the training data against the champion's reference. Looser than
        ``max_drifted_share`` on purpose: retraining after drift *is* training on drifted
        data; this catches a wrong or broken file, not a moving world.
    small_reference : int
        Reference sizes up to this use statistical tests under ``auto``; above, distances.
    """

    method: Method = "auto"
    threshold: float | None = Field(default=None, gt=0)
    thresholds: dict[Test, float] = Field(default_factory=dict)
    max_psi: float = Field(default=DEFAULT_MAX_PSI, gt=0)
    per_column: dict[str, ColumnDriftRule] = Field(default_factory=dict)
    max_drifted_share: float = Field(default=0.5, ge=0, le=1)
    max_training_drifted_share: float = Field(default=0.8, ge=0, le=1)
    small_reference: int = Field(default=SMALL_REFERENCE, ge=0)

    @model_validator(mode="after")
    def _compatible_and_consistent(self) -> DriftRule:
        if "max_psi" in self.model_fields_set and "method" not in self.model_fields_set:
            self.method = "psi"
        _check_threshold(self.method, self.threshold)
        for test, value in self.thresholds.items():
            if value <= 0:
                raise ValueError(f"thresholds.{test}: give a value above 0")
            _check_threshold(test, value)
        return self

    def threshold_for(self, column: str, test: str) -> float:
        own = self.per_column.get(column)
        if own is not None and own.threshold is not None and test == own.method:
            return own.threshold
        if self.threshold is not None and test == self.method:
            return self.threshold
        if test in self.thresholds:
            return self.thresholds[test]
        return self.max_psi if test == "psi" else DEFAULT_THRESHOLDS[test]

    def gate_rules(self, evidence: Mapping[str, Any]) -> list[RuleResult]:
        """``drift.training_drifted_share``: the training data's drift report (``evidence["drift"]``,
        a ``DriftReport`` dump) against ``max_training_drifted_share``."""
        rule, limit = "drift.training_drifted_share", self.max_training_drifted_share
        report = evidence.get("drift")
        if not report:
            return [not_applied_rule(rule, limit, "no champion reference: drift not measured")]
        share = float(report["drifted_share"])
        drifted = [c["column"] for c in report.get("columns", []) if c.get("drifted")]
        return [
            RuleResult(
                rule=rule,
                value=share,
                limit=limit,
                passed=share <= limit,
                detail="drifted columns: " + (", ".join(drifted) or "none"),
            )
        ]
