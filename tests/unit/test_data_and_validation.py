import numpy as np
import pandas as pd
import pytest

from llmops.tabular.data import DataError, dataset_version, infer_schema, load_table, normalize
from llmops.tabular.rules import ColumnRule, DataRules
from llmops.tabular.validation import validate_table


@pytest.fixture(scope="module")
def cancer():
    frame = load_table()
    schema = infer_schema(frame, "target")
    return normalize(frame, schema), schema


def test_default_dataset_loads_with_named_classes(cancer):
    frame, schema = cancer
    assert len(frame) == 569
    assert schema.classes == ["benign", "malignant"]
    assert set(schema.features.values()) == {"numeric"}


def test_unknown_target_names_the_parameter_and_column():
    with pytest.raises(DataError, match=r"--target: column 'label'"):
        infer_schema(load_table(), "label")


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_table(str(tmp_path / "missing.csv"))
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(DataError, match="unsupported file type"):
        load_table(str(tmp_path / "x.txt"))


def test_csv_and_parquet_give_the_same_version(tmp_path, cancer):
    frame, schema = cancer
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    versions = {
        dataset_version(normalize(load_table(str(tmp_path / f)), schema), schema)
        for f in ("d.csv", "d.parquet")
    }
    assert len(versions) == 1


def test_version_changes_with_content_and_schema(cancer):
    frame, schema = cancer
    base = dataset_version(frame, schema)
    assert base == dataset_version(frame.copy(), schema)
    changed = frame.copy()
    changed.iloc[0, 0] += 1
    assert dataset_version(changed, schema) != base
    other_schema = schema.model_copy(
        update={"features": dict(schema.features, **{"mean radius": "categorical"})}
    )
    assert dataset_version(frame, other_schema) != base


def test_clean_data_passes_every_check(cancer):
    frame, schema = cancer
    report = validate_table(frame, schema, DataRules())
    assert report.passed, report.describe_failures()


def test_missing_values_fail_naming_column_and_rule(cancer):
    frame, schema = cancer
    broken = frame.copy()
    broken.loc[broken.index[:300], "mean area"] = np.nan
    report = validate_table(broken, schema, DataRules(max_missing_share=0.2))
    assert not report.passed
    assert [(c.rule, c.column) for c in report.failures] == [("max_missing_share", "mean area")]
    assert "column 'mean area': rule 'max_missing_share'" in report.describe_failures()


def test_range_duplicates_and_class_balance(cancer):
    frame, schema = cancer
    broken = pd.concat([frame, frame.iloc[:100]], ignore_index=True)
    rules = DataRules(
        max_duplicate_share=0.05, min_class_share=0.45, columns={"mean radius": ColumnRule(max=20.0)}
    )
    failed = {(c.rule, c.column) for c in validate_table(broken, schema, rules).failures}
    assert failed == {("max", "mean radius"), ("max_duplicate_share", None), ("min_class_share", "target")}


def test_non_numeric_values_in_numeric_column_fail(cancer):
    frame, schema = cancer
    broken = frame.copy().astype({"mean texture": object})
    broken.loc[broken.index[0], "mean texture"] = "abc"
    failed = {(c.rule, c.column) for c in validate_table(broken, schema, DataRules()).failures}
    assert ("numeric_type", "mean texture") in failed
