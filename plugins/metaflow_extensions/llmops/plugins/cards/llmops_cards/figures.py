"""The cards' figures as Vega-Lite specs: plain dicts, drawn in the browser by the card viewer.

Metaflow's card bundle carries Vega, so a card shows these (with tooltips) offline. Building a
spec imports nothing heavy: a card process, started once per card per task, no longer imports and
renders matplotlib (about 1 s of CPU each).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmops.tabular.profile import Profile

SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
BLUE, GREEN, RED = "#4c72b0", "#55a868", "#c44e52"
Spec = dict[str, Any]


def _spec(**parts: Any) -> Spec:
    return {"$schema": SCHEMA, **parts}


def _grid(charts: list[Spec], columns: int) -> Spec:
    """Small charts side by side, ``columns`` to a row."""
    return _spec(concat=charts, columns=columns, spacing=12)


def _bins(bounds: list[float], counts: list[float], series: str) -> list[dict[str, Any]]:
    """One row per bin: its edges and the density of ``counts`` over the bin's width (decile bins
    hold equal counts by construction; density shows the shape)."""
    total = max(float(sum(counts)), 1.0)
    return [
        {"x0": low, "x1": high, "density": count / total / max(high - low, 1e-12), "series": series}
        for low, high, count in zip(bounds, bounds[1:], counts, strict=False)
    ]


def profile_figure(profile: Profile, max_columns: int = 12) -> Spec:
    """One small bar chart per column: reference bins (numeric) or value counts (categorical)."""
    charts = []
    for name in list(profile.columns)[:max_columns]:
        column = profile.columns[name]
        title = {"text": name[:28], "fontSize": 10}
        if column.kind == "numeric" and column.min is not None:
            bounds = [column.min, *(column.edges or []), column.max]
            charts.append({
                "title": title, "width": 150, "height": 80,
                "data": {"values": _bins(bounds, list(column.bin_counts or []), "reference")},
                "mark": {"type": "rect", "color": BLUE},
                "encoding": {
                    "x": {"field": "x0", "type": "quantitative", "title": None, "scale": {"zero": False}},
                    "x2": {"field": "x1"},
                    "y": {"field": "density", "type": "quantitative", "axis": None},
                },
            })  # fmt: skip
        else:
            items = sorted((column.value_counts or {}).items(), key=lambda kv: -kv[1])[:10]
            charts.append({
                "title": title, "width": 150, "height": 80,
                "data": {"values": [{"value": k[:10], "count": v} for k, v in items]},
                "mark": {"type": "bar", "color": GREEN},
                "encoding": {
                    "x": {"field": "value", "type": "nominal", "sort": "-y", "title": None},
                    "y": {"field": "count", "type": "quantitative", "title": None},
                },
            })  # fmt: skip
    return _grid(charts, columns=4)


def candidates_figure(scores: dict[str, float], metric: str) -> Spec:
    """Validation score of every candidate, best on top."""
    low = min(scores.values(), default=0.0)
    return _spec(
        width=500,
        data={"values": [{"candidate": k, "score": v} for k, v in scores.items()]},
        mark={"type": "bar", "color": BLUE, "tooltip": True},
        encoding={
            "y": {"field": "candidate", "type": "nominal", "sort": "-x", "title": None},
            "x": {
                "field": "score", "type": "quantitative", "title": f"validation {metric}",
                "scale": {"domain": [max(0.0, low - 0.05), 1.0], "clamp": True},
            },
        },
    )  # fmt: skip


def confusion_figure(matrix: list[list[int]], classes: list[str]) -> Spec:
    """Counts of actual (rows) against predicted (columns) classes."""
    cells = [
        {"actual": classes[i], "predicted": classes[j], "count": int(value)}
        for i, row in enumerate(matrix)
        for j, value in enumerate(row)
    ]
    top = max((cell["count"] for cell in cells), default=0)
    axis = {"type": "nominal", "sort": list(classes)}
    return _spec(
        width=60 * len(classes), height=60 * len(classes),
        data={"values": cells},
        encoding={"x": {"field": "predicted", **axis}, "y": {"field": "actual", **axis}},
        layer=[
            {"mark": "rect", "encoding": {"color": {"field": "count", "type": "quantitative",
                                                     "scale": {"scheme": "blues"}}}},
            {"mark": "text", "encoding": {
                "text": {"field": "count", "type": "quantitative"},
                "color": {"condition": {"test": f"datum.count > {top / 2}", "value": "white"},
                          "value": "black"},
            }},
        ],
    )  # fmt: skip


def gate_figure(rules: list[dict]) -> Spec:
    """Each rule with a value and a limit: measured value (bar, red when failed) and limit (tick)."""
    shown = [
        {**{key: r[key] for key in ("rule", "value", "limit")}, "result": "ok" if r["passed"] else "FAIL"}
        for r in rules
        if r.get("value") is not None and r.get("limit") is not None
    ]
    rule = {"field": "rule", "type": "nominal", "title": None, "sort": None}
    return _spec(
        width=500,
        data={"values": shown},
        encoding={"y": rule},
        layer=[
            {"mark": {"type": "bar", "tooltip": True}, "encoding": {
                "x": {"field": "value", "type": "quantitative",
                      "title": "measured value (bar) and limit (tick)"},
                "color": {"field": "result", "type": "nominal",
                          "scale": {"domain": ["ok", "FAIL"], "range": [GREEN, RED]}},
            }},
            {"mark": {"type": "tick", "color": "black", "thickness": 2},
             "encoding": {"x": {"field": "limit", "type": "quantitative"}}},
        ],
    )  # fmt: skip


def drift_figure(profile: Profile, current, columns: list[str], drifted: set[str]) -> Spec:
    """Reference (outline) against current (filled) distribution per column, on the bins the drift
    tests use (:func:`llmops.tabular.drift.column_histograms`): densities for numeric columns, shares for
    categories (the ten first)."""
    from llmops.tabular.drift import DriftError, column_histograms

    charts = []
    for name in columns:
        colour = RED if name in drifted else GREEN
        title = {"text": ("DRIFT  " if name in drifted else "") + name[:30], "fontSize": 10,
                 "color": RED if name in drifted else "black"}  # fmt: skip
        try:
            bins, ref_counts, cur_counts = column_histograms(profile, current, name)
        except DriftError:
            bins, ref_counts, cur_counts = [], [], []
        chart: Spec = {"title": title, "width": 200, "height": 90}
        if not len(bins) or not sum(cur_counts):
            charts.append({**chart, "data": {"values": [{"note": "no current values"}]},
                           "mark": {"type": "text"}, "encoding": {"text": {"field": "note"}}})  # fmt: skip
        elif isinstance(bins[0], (int, float)) and len(bins) == len(ref_counts) + 1:  # numeric edges
            bounds = [float(b) for b in bins]
            values = _bins(bounds, [float(c) for c in ref_counts], "reference")
            values += _bins(bounds, [float(c) for c in cur_counts], "current")
            encoding = {
                "x": {"field": "x0", "type": "quantitative", "title": None, "scale": {"zero": False}},
                "x2": {"field": "x1"},
                "y": {"field": "density", "type": "quantitative", "axis": None},
            }
            charts.append({**chart, "data": {"values": values}, "encoding": encoding, "layer": [
                {"transform": [{"filter": "datum.series == 'current'"}],
                 "mark": {"type": "rect", "color": colour, "opacity": 0.5}},
                {"transform": [{"filter": "datum.series == 'reference'"}],
                 "mark": {"type": "rect", "fillOpacity": 0, "stroke": "black"}},
            ]})  # fmt: skip
        else:  # categories, or the few values of a discrete numeric column
            shown = [str(k)[:10] for k in bins[:10]]
            ref_total, cur_total = max(float(sum(ref_counts)), 1.0), max(float(sum(cur_counts)), 1.0)
            values = [
                {"value": v, "series": "reference", "share": float(r) / ref_total}
                for v, r in zip(shown, ref_counts, strict=False)
            ]
            values += [{"value": v, "series": "current", "share": float(c) / cur_total}
                       for v, c in zip(shown, cur_counts, strict=False)]  # fmt: skip
            charts.append({**chart, "data": {"values": values}, "mark": {"type": "bar", "tooltip": True},
                "encoding": {
                    "x": {"field": "value", "type": "nominal", "sort": shown, "title": None},
                    "xOffset": {"field": "series", "sort": ["reference", "current"]},
                    "y": {"field": "share", "type": "quantitative", "title": None},
                    "color": {"field": "series", "type": "nominal",
                              "scale": {"domain": ["reference", "current"], "range": ["black", colour]}},
                }})  # fmt: skip
    return _grid(charts, columns=3)


def loss_figure(history: list[dict[str, float]], resumed_from: int | None = None) -> Spec:
    """Training loss per logged step; a dashed line where a retry or resume continued."""
    line = {
        "data": {"values": [{"step": h["step"], "loss": h["loss"]} for h in history]},
        "mark": {"type": "line", "point": True, "color": BLUE, "tooltip": True},
        "encoding": {
            "x": {"field": "step", "type": "quantitative"},
            "y": {
                "field": "loss",
                "type": "quantitative",
                "title": "training loss",
                "scale": {"zero": False},
            },
        },
    }
    layers = [line]
    if resumed_from:
        layers.append({
            "data": {"values": [{"step": resumed_from, "note": f"continued from step {resumed_from}"}]},
            "mark": {"type": "rule", "color": RED, "strokeDash": [6, 4], "tooltip": True},
            "encoding": {"x": {"field": "step", "type": "quantitative"}, "tooltip": {"field": "note"}},
        })  # fmt: skip
    return _spec(width=500, height=180, layer=layers)


def question_map_figure(points: list[dict[str, Any]], furthest: list[int]) -> Spec:
    """Reference and window questions on the pooled sample's first two principal components
    (:func:`llmops.rag.question_drift.drift_map`); the furthest window questions are ringed."""
    far = set(furthest)
    values = [{**p, "far": p["set"] == "window" and p["index"] in far} for p in points]
    return _spec(
        width=420, height=300,
        data={"values": values},
        mark={"type": "point", "filled": True, "opacity": 0.7, "tooltip": True},
        encoding={
            "x": {"field": "x", "type": "quantitative", "title": "PC 1"},
            "y": {"field": "y", "type": "quantitative", "title": "PC 2"},
            "color": {"field": "set", "type": "nominal",
                      "scale": {"domain": ["reference", "window"], "range": [BLUE, RED]}},
            "size": {"condition": {"test": "datum.far", "value": 160}, "value": 40},
        },
    )  # fmt: skip


def top_score_figure(reference: list[float], window: list[float], bins: int = 20) -> Spec:
    """Histograms of the top retrieval score per question: reference (outline) against window."""
    low = min([*reference, *window], default=0.0)
    high = max([*reference, *window], default=1.0)
    width = max(high - low, 1e-6) / bins

    def histogram(scores: list[float], series: str) -> list[dict[str, Any]]:
        counts = [0] * bins
        for score in scores:
            counts[min(int((score - low) / width), bins - 1)] += 1
        edges = [low + i * width for i in range(bins + 1)]
        return _bins(edges, counts, series)

    values = histogram(reference, "reference") + histogram(window, "window")
    return _spec(
        width=420, height=160,
        data={"values": values},
        encoding={
            "x": {"field": "x0", "type": "quantitative", "title": "top score", "scale": {"zero": False}},
            "x2": {"field": "x1"},
            "y": {"field": "density", "type": "quantitative", "title": "density"},
        },
        layer=[
            {"transform": [{"filter": "datum.series == 'window'"}],
             "mark": {"type": "rect", "color": RED, "opacity": 0.5}},
            {"transform": [{"filter": "datum.series == 'reference'"}],
             "mark": {"type": "rect", "fillOpacity": 0, "stroke": "black"}},
        ],
    )  # fmt: skip


def feedback_figure(ratings: list[dict[str, Any]]) -> Spec:
    """Ratings per hour of the window, positive above the axis and negative below."""
    values = [{"hour": r["timestamp"][:13] + ":00", "rating": "up" if r["rating"] > 0 else "down",
               "count": 1 if r["rating"] > 0 else -1} for r in ratings]  # fmt: skip
    return _spec(
        width=420, height=140,
        data={"values": values},
        mark={"type": "bar", "tooltip": True},
        encoding={
            "x": {"field": "hour", "type": "ordinal", "title": "hour (UTC)"},
            "y": {"aggregate": "sum", "field": "count", "type": "quantitative", "title": "ratings"},
            "color": {"field": "rating", "type": "nominal",
                      "scale": {"domain": ["up", "down"], "range": [GREEN, RED]}},
        },
    )  # fmt: skip
