"""The promotion gate: policy as code, one decision with every rule and its measured value.

A policy (``evals/<model>.yaml``) holds absolute metric thresholds, the regression allowed
against the current champion and a fairness limit across groups, which every pipeline shares,
plus the sections a pipeline adds for itself (the classifier's ``data:`` and ``drift:``). A
pipeline registers its sections under the entry-point group ``llmops.policy_sections``
(``pyproject.toml``), so this module reads every pipeline's policy without importing one.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from llmops.errors import LlmopsError, parse_yaml_model

SECTIONS_GROUP = "llmops.policy_sections"


class PolicyError(LlmopsError, ValueError):
    """A policy file that cannot be used; the message names the file and the field."""


class RuleResult(BaseModel):
    rule: str  # e.g. "metrics.f1.min", "regression.accuracy", "fairness.recall.gap"
    value: float | None
    limit: float | None
    passed: bool
    detail: str = ""  # for a rule not applied: why
    applied: bool = True  # False: nothing to compare yet (see evaluate_gate); it passes, saying why


class PolicySection(BaseModel):
    """A pipeline's own section of a policy, registered under ``llmops.policy_sections``.

    A section may only configure a step (the classifier's ``data:`` rules) or also add gate rules:
    :meth:`gate_rules` turns the evidence the gated step produced (``@gate`` hands it over by
    role: ``drift`` is the training-drift report) into rule results."""

    model_config = ConfigDict(extra="forbid")
    always: ClassVar[bool] = False  # True: a policy without the section gets its defaults

    def gate_rules(self, evidence: Mapping[str, Any]) -> list[RuleResult]:
        return []


class Threshold(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> Threshold:
        if self.min is None and self.max is None:
            raise ValueError("give 'min' or 'max'")
        return self


class FairnessRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = "recall"
    max_gap: float = Field(default=0.1, ge=0)
    min_group_size: int = Field(default=20, ge=1)


class GatePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    metrics: dict[str, Threshold] = Field(default_factory=dict)
    regression: dict[str, float] = Field(default_factory=dict)  # allowed worsening vs champion
    lower_is_better: list[str] = Field(default_factory=list)  # e.g. perplexity: worse means higher
    fairness: FairnessRule | None = None

    @model_validator(mode="after")
    def _lower_is_better_names_gated_metrics(self) -> GatePolicy:
        named = set(self.metrics) | set(self.regression)
        unknown = [m for m in self.lower_is_better if m not in named]
        if unknown:  # a typo would silently turn a regression rule the wrong way round
            raise ValueError(f"lower_is_better: {unknown} are not under metrics or regression")
        return self

    def sections(self) -> dict[str, PolicySection]:
        """The pipeline sections this policy holds, by name."""
        return {n: v for n in _section_names(type(self)) if (v := getattr(self, n)) is not None}

    def version(self) -> str:
        dumped = self.model_dump(mode="json")
        body = {k: v for k, v in dumped.items() if v is not None or k not in _section_names(type(self))}
        return "policy-" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


def _section_names(model: type[GatePolicy]) -> list[str]:
    """The pipeline sections of a policy model (its fields beyond the shared ones)."""
    return [n for n in model.model_fields if n not in GatePolicy.model_fields]


@cache
def policy_model() -> type[GatePolicy]:
    """:class:`GatePolicy` with every registered pipeline section as an optional field, so a section
    is checked like any field (``drift.max_psi: Input should be greater than 0``) and an
    unregistered key is refused (``surprise: Extra inputs are not permitted``)."""
    fields: dict[str, Any] = {}
    for point in sorted(entry_points(group=SECTIONS_GROUP), key=lambda p: p.name):
        where = f"policy section {point.name!r} ({point.value})"
        if point.name in fields or point.name in GatePolicy.model_fields:
            raise PolicyError(f"{where}: the name is already taken; an installed package registers it twice")
        try:
            section = point.load()
        except Exception as exc:  # a broken pipeline install must say which one, not trace back
            raise PolicyError(f"{where} cannot be loaded: {type(exc).__name__}: {exc}") from None
        if not (isinstance(section, type) and issubclass(section, PolicySection)):
            raise PolicyError(f"{where} is not a PolicySection")
        if section.always:
            fields[point.name] = (section, Field(default_factory=section))
        else:
            fields[point.name] = (section | None, None)
    return create_model("GatePolicy", __base__=GatePolicy, **fields)


def policy_from_config(config: Mapping[str, Any]) -> GatePolicy:
    """A policy from the plain dict a flow's ``Config`` holds (already checked by its parser)."""
    return policy_model().model_validate(dict(config))


def parse_policy(text: str, source: str = "policy") -> GatePolicy:
    return parse_yaml_model(text, policy_model(), source, PolicyError)


def load_policy(path: str | Path) -> GatePolicy:
    path = Path(path)
    if not path.is_file():
        raise PolicyError(f"policy file not found: {path}")
    return parse_policy(path.read_text(), source=str(path))


def parse_policy_config(text: str) -> dict[str, Any]:
    """Parser for a Metaflow ``Config``: validates, then hands Metaflow a plain dict."""
    return parse_policy(text).model_dump(mode="json")


class ChampionScored(BaseModel):
    """The champion's scores on the candidate's own test set (or golden set, or held-out examples):
    what the regression rules compare, like with like. Every flow stores it as the artifact
    ``champion_scored`` (a dict, via :func:`champion_scored`), which ``@gate`` reads."""

    version: str
    scores: dict[str, float]


def champion_scored(version: str, scores: dict[str, float]) -> dict[str, Any]:
    """The one shape of ``champion_scored``: ``{"version": ..., "scores": {metric: value}}``."""
    return ChampionScored(version=version, scores=scores).model_dump()


class GateDecision(BaseModel):
    model: str
    passed: bool
    rules: list[RuleResult]
    policy_version: str
    champion_version: str | None = None

    @property
    def failed_rules(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.passed]

    @property
    def not_applied(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.applied]

    def summary(self) -> str:
        if self.passed:
            held = f"gate PASSED for {self.model!r}: {len(self.rules)} rules held"
            if not self.not_applied:
                return held
            why = "; ".join(f"{r.rule} ({r.detail})" for r in self.not_applied)
            return f"{held}, {len(self.not_applied)} of them not applied: {why}"
        failed = ", ".join(
            f"{r.rule} (measured {_fmt(r.value)}, limit {_fmt(r.limit)})" for r in self.failed_rules
        )
        return f"gate FAILED for {self.model!r}: {failed}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def missing_rule(rule: str, limit: float | None, why: str) -> RuleResult:
    """A rule whose input should be there and is not: it fails, saying what is missing."""
    return RuleResult(rule=rule, value=None, limit=limit, passed=False, detail=why)


def not_applied_rule(rule: str, limit: float | None, why: str) -> RuleResult:
    """A rule with nothing to compare yet: it passes, marked not applied, saying why."""
    return RuleResult(rule=rule, value=None, limit=limit, passed=True, applied=False, detail=why)


def evaluate_gate(
    policy: GatePolicy,
    scores: dict[str, float],
    *,
    champion_scores: dict[str, float] | None = None,
    champion_version: str | None = None,
    group_scores: dict[str, dict[str, float]] | None = None,
    group_sizes: dict[str, int] | None = None,
    evidence: Mapping[str, Any] | None = None,
) -> GateDecision:
    """Apply every rule of ``policy``. What a missing input means is decided per rule:

    - ``metrics.*``: a metric that was not measured (or is NaN) fails.
    - ``regression.*``: without a champion the rule is not applied (nothing to regress from);
      with one, a metric missing on either side fails.
    - ``fairness.*``: without group scores (no group column given), or with fewer than two groups
      of ``min_group_size`` rows, it is not applied; a metric measured for no group fails.
    - a pipeline section's rules (``drift.*``) are its own: it reads ``evidence`` (the
      classifier's drift rule is not applied without the champion's reference profile).

    A rule not applied passes with ``applied=False`` and a detail that says why, so the decision
    record shows it was not checked rather than that it held."""
    rules: list[RuleResult] = []
    bad = [k for k, v in scores.items() if not isinstance(v, int | float)]
    if bad:
        raise PolicyError(f"eval_scores.{bad[0]}: expected a number, got {scores[bad[0]]!r}")

    for metric, threshold in policy.metrics.items():
        value = scores.get(metric)
        for bound, limit in (("min", threshold.min), ("max", threshold.max)):
            if limit is None:
                continue
            if value is None or math.isnan(value):
                rules.append(
                    missing_rule(f"metrics.{metric}.{bound}", limit, f"metric {metric!r} was not measured")
                )
                continue
            ok = value >= limit if bound == "min" else value <= limit
            rules.append(RuleResult(rule=f"metrics.{metric}.{bound}", value=value, limit=limit, passed=ok))

    for metric, allowed_drop in policy.regression.items():
        if not champion_scores:
            rules.append(
                not_applied_rule(
                    f"regression.{metric}", allowed_drop, "no champion yet: nothing to regress from"
                )
            )
            continue
        new, old = scores.get(metric), champion_scores.get(metric)
        if new is None or old is None:
            rules.append(
                missing_rule(f"regression.{metric}", allowed_drop, f"metric {metric!r} missing for a side")
            )
            continue
        drop = new - old if metric in policy.lower_is_better else old - new
        rules.append(
            RuleResult(
                rule=f"regression.{metric}",
                value=round(drop, 6),
                limit=allowed_drop,
                passed=drop <= allowed_drop,
                detail=f"champion {champion_version}: {old:.4f} -> candidate {new:.4f}",
            )
        )

    if policy.fairness is not None:
        rules.append(_fairness_rule(policy.fairness, group_scores, group_sizes))

    for section in policy.sections().values():
        rules.extend(section.gate_rules(evidence or {}))

    return GateDecision(
        model=policy.model,
        passed=all(r.passed for r in rules),
        rules=rules,
        policy_version=policy.version(),
        champion_version=champion_version,
    )


def _fairness_rule(
    rule: FairnessRule,
    group_scores: dict[str, dict[str, float]] | None,
    group_sizes: dict[str, int] | None,
) -> RuleResult:
    name = f"fairness.{rule.metric}.gap"
    if not group_scores:
        return not_applied_rule(name, rule.max_gap, "no group column given: fairness not measured")
    if not any(rule.metric in metrics for metrics in group_scores.values()):
        return missing_rule(name, rule.max_gap, f"metric {rule.metric!r} was not measured for any group")
    sizes = group_sizes or {}
    values = {
        group: metrics[rule.metric]
        for group, metrics in group_scores.items()
        if sizes.get(group, rule.min_group_size) >= rule.min_group_size and rule.metric in metrics
    }
    if len(values) < 2:
        return not_applied_rule(name, rule.max_gap, f"fewer than 2 groups with >= {rule.min_group_size} rows")
    worst, best = min(values, key=values.get), max(values, key=values.get)
    gap = values[best] - values[worst]
    return RuleResult(
        rule=name,
        value=round(gap, 6),
        limit=rule.max_gap,
        passed=gap <= rule.max_gap,
        detail=f"lowest {worst!r} {values[worst]:.4f}, highest {best!r} {values[best]:.4f}",
    )
