"""The UI's Vega-Lite charts: plain dicts, drawn in the browser by the vendored vega and vega-lite
(static/), as the cards draw theirs (``llmops_cards.figures``)."""

from __future__ import annotations

from typing import Any

SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
STATUS_COLORS = {"domain": ["passed", "failed", "not applied"], "range": ["#55a868", "#c44e52", "#999999"]}
Spec = dict[str, Any]


def measures_chart(points: list[dict[str, Any]], width: int = 620) -> Spec:
    """One row per measure over time: the value as a line, each run a point coloured by its
    status, the limit as a dashed line; each row has its own scale (a share, milliseconds, a
    p-value)."""
    time = {"field": "at", "type": "temporal", "title": None}
    value = {"field": "value", "type": "quantitative", "title": None}
    return {
        "$schema": SCHEMA,
        "data": {"values": points},
        "facet": {"row": {"field": "measure", "type": "nominal", "title": None,
                          "header": {"labelAngle": 0, "labelAlign": "left", "labelFontSize": 11}}},
        "spec": {
            "width": width,
            "height": 70,
            "layer": [
                {"mark": {"type": "line", "color": "#4c72b0"}, "encoding": {"x": time, "y": value}},
                {
                    "mark": {"type": "point", "filled": True, "size": 60, "tooltip": True},
                    "encoding": {
                        "x": time, "y": value,
                        "color": {"field": "status", "type": "nominal", "scale": STATUS_COLORS,
                                  "legend": {"orient": "top", "title": None}},
                        "tooltip": [{"field": "at", "type": "temporal", "title": "window end"},
                                    {"field": "value", "format": ".4g"}, {"field": "limit"},
                                    {"field": "status"}, {"field": "run"}],
                    },
                },
                {"mark": {"type": "line", "strokeDash": [4, 3], "color": "#c44e52"},
                 "encoding": {"x": time, "y": {"field": "limit", "type": "quantitative"}}},
            ],
        },
        "resolve": {"scale": {"y": "independent"}},
    }  # fmt: skip


def drifted_columns_chart(cells: list[dict[str, Any]], width: int = 620) -> Spec:
    """Which columns drifted in which monitor run: a cell per (run, column)."""
    return {
        "$schema": SCHEMA,
        "width": width,
        "data": {"values": cells},
        "mark": {"type": "rect", "color": "#c44e52", "tooltip": True},
        "encoding": {
            "x": {"field": "at", "type": "ordinal", "title": "monitor run (window end)",
                  "axis": {"labelAngle": -40, "labelLimit": 120}},
            "y": {"field": "column", "type": "nominal", "title": None},
        },
    }  # fmt: skip
