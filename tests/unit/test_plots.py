"""Card figures are Vega-Lite specs of plain values: what they draw comes from their inputs, and
building one imports neither matplotlib nor pandas (a card process per card per task pays it)."""

import json

from metaflow_extensions.llmops.plugins.cards.llmops_cards import figures as plots
from tests.fresh_process import imported_by


def test_the_gate_figure_draws_each_measured_rule_against_its_limit():
    rules = [
        {"rule": "metrics.accuracy.min", "value": 0.96, "limit": 0.9, "passed": True},
        {"rule": "regression.f1", "value": 0.1, "limit": 0.05, "passed": False},
        {"rule": "fairness.gap", "value": None, "limit": None, "passed": True},  # not applied: not drawn
    ]
    spec = json.loads(json.dumps(plots.gate_figure(rules)))
    assert spec["$schema"].endswith("vega-lite/v5.json")
    assert [(r["rule"], r["value"], r["limit"], r["result"]) for r in spec["data"]["values"]] == [
        ("metrics.accuracy.min", 0.96, 0.9, "ok"),
        ("regression.f1", 0.1, 0.05, "FAIL"),
    ]
    bar, tick = spec["layer"]
    assert bar["encoding"]["x"]["field"] == "value" and tick["encoding"]["x"]["field"] == "limit"


def test_confusion_loss_and_candidates_figures_carry_their_inputs():
    confusion = plots.confusion_figure([[50, 3], [2, 60]], ["benign", "malignant"])
    cells = {(c["actual"], c["predicted"]): c["count"] for c in confusion["data"]["values"]}
    assert cells == {("benign", "benign"): 50, ("benign", "malignant"): 3,
                     ("malignant", "benign"): 2, ("malignant", "malignant"): 60}  # fmt: skip
    loss = plots.loss_figure([{"step": s, "loss": 5.0 - s / 10} for s in (1, 2, 3)], resumed_from=2)
    line, resumed = loss["layer"]
    assert [p["step"] for p in line["data"]["values"]] == [1, 2, 3]
    assert resumed["data"]["values"][0]["step"] == 2 and resumed["mark"]["type"] == "rule"
    assert len(plots.loss_figure([{"step": 1, "loss": 1.0}])["layer"]) == 1  # no resume, no line
    candidates = plots.candidates_figure({"a": 0.9, "b": 0.97}, "roc_auc")
    assert candidates["encoding"]["x"]["title"] == "validation roc_auc"
    assert candidates["encoding"]["x"]["scale"]["domain"] == [0.85, 1.0]
    json.dumps([confusion, loss, candidates])


def test_building_figures_imports_neither_matplotlib_nor_pandas():
    code = (
        "from metaflow_extensions.llmops.plugins.cards.llmops_cards import figures as plots; "
        "plots.gate_figure([{'rule': 'r', 'value': 1.0, 'limit': 0.5, 'passed': True}]); "
        "plots.loss_figure([{'step': 1, 'loss': 2.0}])"
    )
    assert imported_by(code, ("matplotlib", "pandas")) == []
