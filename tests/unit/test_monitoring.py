import pandas as pd
import pytest

from llmops.gates import parse_policy
from llmops.tabular.data import DataError, TableSchema
from llmops.tabular.drift import ColumnDrift, DriftReport
from llmops.tabular.monitoring import (
    decide_retrain,
    join_feedback,
    live_metrics,
    load_feedback,
    parse_instant,
    retraining_set,
)

SCHEMA = TableSchema(target="y", features={"x": "numeric"}, classes=["no", "yes"])
WINDOW = pd.DataFrame(
    {
        "request_id": ["a", "a", "b", "c"],
        "row": [0, 1, 0, 0],
        "x": [1.0, 2.0, 3.0, 4.0],
        "prediction": ["yes", "no", "yes", "no"],
    }
)


def report(drifted_share: float, drifted: bool) -> DriftReport:
    columns = [
        ColumnDrift(column="x", kind="numeric", statistic="ks", value=0.5, threshold=0.1, drifted=drifted)
    ]
    return DriftReport(columns=columns, drifted_share=drifted_share, dataset_drifted=drifted)


def test_feedback_joins_by_request_and_row(tmp_path):
    path = tmp_path / "labels.csv"
    pd.DataFrame({"request_id": ["a", "b", "zzz"], "row": [1, 0, 0], "label": ["no", "no", "yes"]}).to_csv(
        path, index=False
    )
    labelled = join_feedback(WINDOW, load_feedback(path, "y"))
    assert sorted(zip(labelled["request_id"], labelled["row"], labelled["y"], strict=True)) == [
        ("a", 1, "no"),
        ("b", 0, "no"),
    ]
    scores = live_metrics(labelled, SCHEMA)
    assert scores["accuracy"] == 0.5 and scores["labelled_rows"] == 2


def test_feedback_without_keys_names_the_missing_columns(tmp_path):
    path = tmp_path / "labels.csv"
    pd.DataFrame({"id": ["a"], "y": ["no"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"--feedback: .*\['request_id', 'row'\]"):
        load_feedback(path, "y")


def test_retrain_on_drift_or_on_live_metrics_below_the_policy():
    policy = parse_policy("model: m\nmetrics: {accuracy: {min: 0.9}}")
    assert not decide_retrain(policy, report(0.0, False), {"accuracy": 0.95}).retrain
    drifted = decide_retrain(policy, report(1.0, True), None)
    assert drifted.retrain and "data drift" in drifted.reasons[0] and "x" in drifted.reasons[0]
    worse = decide_retrain(policy, report(0.0, False), {"accuracy": 0.7})
    assert worse.retrain and worse.reasons == ["live accuracy 0.7000 < 0.9"]


def test_retraining_set_appends_labelled_rows_in_schema_columns():
    training = pd.DataFrame({"x": [0.0, 1.0], "y": ["no", "yes"], "extra": [1, 2]})
    labelled = WINDOW.assign(y=["yes", "no", "yes", "no"])
    combined = retraining_set(training, labelled, SCHEMA)
    assert list(combined.columns) == ["x", "y"] and len(combined) == 6


def test_window_bounds_are_checked_and_normalized_to_utc():
    assert parse_instant("", "--since") is None
    assert parse_instant("2026-11-01T00:00", "--since") == "2026-11-01T00:00:00+00:00"
    assert parse_instant("2026-11-01T02:00+02:00", "--until") == "2026-11-01T00:00:00+00:00"
    with pytest.raises(DataError, match="--since: 'yesterday' is not an ISO-8601 time"):
        parse_instant("yesterday", "--since")


def test_feedback_rows_must_be_whole_numbers(tmp_path):
    path = tmp_path / "labels.csv"
    pd.DataFrame({"request_id": ["a", "b"], "row": [0, None], "y": ["no", "yes"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="--feedback: column 'row' must hold whole numbers"):
        load_feedback(path, "y")
    with pytest.raises(DataError, match="--feedback: no such file"):
        load_feedback(tmp_path / "nope.csv", "y")
