"""Matplotlib figures for cards and reports (Agg backend; nothing opens a window)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from llmops.profile import Profile


def profile_figure(profile: Profile, max_columns: int = 12) -> Figure:
    """One small bar chart per column: reference bins (numeric) or value counts (categorical)."""
    names = list(profile.columns)[:max_columns]
    cols = 4
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        column = profile.columns[name]
        if column.kind == "numeric" and column.min is not None:
            # decile bins hold equal counts by construction: density over their widths shows the shape
            bounds = np.array([column.min, *(column.edges or []), column.max], dtype="float64")
            widths = np.maximum(np.diff(bounds), 1e-12)
            counts = np.asarray(column.bin_counts or [], dtype="float64")[: len(widths)]
            ax.stairs(counts / widths, bounds, fill=True, color="#4c72b0")
            ax.set_xlabel(f"{column.min:.3g} … {column.max:.3g}", fontsize=7)
            ax.set_yticks([])
        else:
            items = sorted((column.value_counts or {}).items(), key=lambda kv: -kv[1])[:10]
            ax.bar([k[:10] for k, _ in items], [v for _, v in items], color="#55a868")
            ax.tick_params(axis="x", labelrotation=45, labelsize=6)
        ax.set_title(name[:28], fontsize=8)
        ax.tick_params(axis="y", labelsize=6)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def candidates_figure(scores: dict[str, float], metric: str) -> Figure:
    """Validation score of every candidate, best on top."""
    items = sorted(scores.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(items) + 1))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#4c72b0")
    low = min(v for _, v in items)
    ax.set_xlim(max(0.0, low - 0.05), 1.0)
    ax.set_xlabel(f"validation {metric}")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig


def confusion_figure(matrix: list[list[int]], classes: list[str]) -> Figure:
    data = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    ax.imshow(data, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for (i, j), value in np.ndenumerate(data):
        ax.text(
            j,
            i,
            str(value),
            ha="center",
            va="center",
            color="white" if value > data.max() / 2 else "black",
        )
    fig.tight_layout()
    return fig


def gate_figure(rules: list[dict]) -> Figure:
    """Each rule with a value and a limit: measured value against the limit, red when failed."""
    shown = [r for r in rules if r.get("value") is not None and r.get("limit") is not None]
    fig, ax = plt.subplots(figsize=(8, 0.4 * max(1, len(shown)) + 1))
    for i, rule in enumerate(shown):
        ax.barh(i, rule["value"], color="#55a868" if rule["passed"] else "#c44e52")
        ax.plot([rule["limit"]] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
    ax.set_yticks(range(len(shown)), [r["rule"] for r in shown], fontsize=7)
    ax.set_xlabel("measured value (bar) and limit (black line)")
    fig.tight_layout()
    return fig


def drift_figure(profile: Profile, current, columns: list[str], drifted: set[str]) -> Figure:
    """Reference (outline) against current (filled) distribution per column, on the bins the drift
    tests use (:func:`llmops.drift.column_histograms`): densities for numeric columns, shares for
    categories (the ten first)."""
    from llmops.drift import DriftError, column_histograms

    cols = 3
    rows = max(1, math.ceil(len(columns) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, columns, strict=False):
        colour = "#c44e52" if name in drifted else "#55a868"
        try:
            bins, ref_counts, cur_counts = column_histograms(profile, current, name)
        except DriftError:
            bins = None
        ref_share = np.asarray(ref_counts, "float64") / max(float(np.sum(ref_counts)), 1.0) if bins else None
        cur_share = np.asarray(cur_counts, "float64") / max(float(np.sum(cur_counts)), 1.0) if bins else None
        if not bins or not np.sum(cur_counts):
            ax.text(0.5, 0.5, "no current values", ha="center", va="center", transform=ax.transAxes)
        elif isinstance(bins[0], (int, float)) and len(bins) == len(ref_counts) + 1:  # numeric edges
            bounds = np.asarray(bins, dtype="float64")
            widths = np.maximum(np.diff(bounds), 1e-12)
            ax.stairs(cur_share / widths, bounds, fill=True, alpha=0.5, color=colour, label="current")
            ax.stairs(ref_share / widths, bounds, color="black", label="reference")
            ax.set_yticks([])
        else:  # categories, or the few values of a discrete numeric column
            x = np.arange(min(len(bins), 10))
            ax.bar(x - 0.2, ref_share[: len(x)], 0.4, color="black", label="reference")
            ax.bar(x + 0.2, cur_share[: len(x)], 0.4, color=colour, label="current")
            ax.set_xticks(x, [str(k)[:10] for k in bins[: len(x)]], rotation=45, fontsize=6)
        ax.set_title(
            ("DRIFT  " if name in drifted else "") + name[:30],
            fontsize=8,
            color="#c44e52" if name in drifted else "black",
        )
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    if columns:
        axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def loss_figure(history: list[dict[str, float]], resumed_from: int | None = None) -> Figure:
    """Training loss per logged step; a dashed line where a retry or resume continued."""
    fig, ax = plt.subplots(figsize=(7, 2.6))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], color="#4c72b0", marker=".")
    if resumed_from:
        ax.axvline(resumed_from, color="#c44e52", linestyle="--", label=f"continued from step {resumed_from}")
        ax.legend(fontsize=7)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    fig.tight_layout()
    return fig
