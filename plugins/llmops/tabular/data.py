"""Tabular datasets: loading, schema inference, content-addressed versions.

A dataset version is a hash of the table's content *and* its schema, so the same
rows typed differently (or labelled by another column) are another version.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from llmops.errors import LlmopsError
from llmops.tabular import DEFAULT_DATASET

ColumnKind = Literal["numeric", "categorical"]
_SKLEARN_DATASETS = {"breast_cancer", "iris", "wine"}


class DataError(LlmopsError, ValueError):
    """Input data that cannot be used; the message names the field and the problem."""


class TableSchema(BaseModel):
    """What a model was trained on: feature columns with their kind, the target and its classes."""

    target: str
    features: dict[str, ColumnKind]
    classes: list[str] = Field(default_factory=list)

    @property
    def numeric(self) -> list[str]:
        return [c for c, k in self.features.items() if k == "numeric"]

    @property
    def categorical(self) -> list[str]:
        return [c for c, k in self.features.items() if k == "categorical"]


def load_table(source: str = DEFAULT_DATASET, field: str = "--data") -> pd.DataFrame:
    """Load a CSV or Parquet file, or a bundled scikit-learn dataset named ``sklearn:<name>``.

    Errors name ``field``, the parameter the path came from."""
    if source.startswith("sklearn:"):
        return _load_sklearn(source.removeprefix("sklearn:"))
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{field}: no such file: {source}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{field}: cannot read {source}: {exc}") from exc
    raise DataError(f"{field}: unsupported file type {suffix!r} (use .csv or .parquet)")


def _load_sklearn(name: str) -> pd.DataFrame:
    if name not in _SKLEARN_DATASETS:
        raise DataError(
            f"--data: unknown bundled dataset 'sklearn:{name}' "
            f"(choose from {', '.join(sorted(_SKLEARN_DATASETS))})"
        )
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    frame = bunch.frame.copy()
    # class names read better than 0/1 in reports and API answers
    frame["target"] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
    return frame


def infer_schema(frame: pd.DataFrame, target: str) -> TableSchema:
    """Numeric columns stay numeric; everything else is categorical. Classes are sorted strings."""
    if target not in frame.columns:
        raise DataError(
            f"--target: column {target!r} is not in the data "
            f"(columns: {', '.join(map(str, frame.columns[:20]))})"
        )
    features: dict[str, ColumnKind] = {}
    for column in frame.columns:
        if column == target:
            continue
        is_numeric = pd.api.types.is_numeric_dtype(frame[column]) and not pd.api.types.is_bool_dtype(
            frame[column]
        )
        features[str(column)] = "numeric" if is_numeric else "categorical"
    classes = sorted(frame[target].dropna().astype(str).unique().tolist())
    return TableSchema(target=target, features=features, classes=classes)


def normalize(frame: pd.DataFrame, schema: TableSchema) -> pd.DataFrame:
    """Column order and dtypes as the schema says: numeric as float, categorical and target as str."""
    out = pd.DataFrame(index=frame.index)
    for column, kind in schema.features.items():
        values = frame[column]
        if kind == "numeric":
            out[column] = pd.to_numeric(values, errors="coerce").astype("float64")
        else:
            out[column] = values.astype("string").astype(object).where(values.notna(), None)
    if schema.target in frame.columns:
        out[schema.target] = frame[schema.target].astype(str)
    return out


def dataset_version(frame: pd.DataFrame, schema: TableSchema) -> str:
    """``ds-<12 hex>``: sha256 over the schema and a row-order-sensitive hash of every cell."""
    digest = hashlib.sha256()
    digest.update(json.dumps(schema.model_dump(), sort_keys=True).encode())
    digest.update(json.dumps([str(c) for c in frame.columns]).encode())
    row_hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    digest.update(row_hashes.tobytes())
    return "ds-" + digest.hexdigest()[:12]
