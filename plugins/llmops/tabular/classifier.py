"""Classic ML building blocks: candidate models, training, metrics, safe model files.

Every candidate is a scikit-learn ``Pipeline`` (impute + scale numeric, impute + one-hot
categorical, then the estimator), so one file holds all the preprocessing a service needs.
Model files use skops, loaded against an allowlist: no pickle, no arbitrary code.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel
from sklearn import metrics as skm
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.tree import BaseDecisionTree

from llmops.errors import LlmopsError, ParameterError
from llmops.tabular.data import TableSchema

MODEL_FILE = "model.skops"
# The only non-default types a model file may contain (trees of the ensembles, numpy dtypes).
TRUSTED_TYPES = [
    "numpy.dtype",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
]

METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")  # what classification_metrics measures

ESTIMATORS: dict[str, type] = {
    "logistic_regression": LogisticRegression,
    "random_forest": RandomForestClassifier,
    "gradient_boosting": HistGradientBoostingClassifier,
}
# small grids: the point is a fair comparison in parallel, not an exhaustive search
GRIDS: dict[str, dict[str, list[Any]]] = {
    "logistic_regression": {"C": [0.1, 1.0, 10.0], "max_iter": [2000]},
    "random_forest": {"n_estimators": [100], "max_depth": [None, 8], "min_samples_leaf": [1, 3]},
    "gradient_boosting": {"learning_rate": [0.05, 0.1], "max_iter": [150], "max_depth": [3, None]},
}


class ModelFileError(LlmopsError, ValueError):
    """A model file that is refused (a type outside :data:`TRUSTED_TYPES`); names the file."""


class Candidate(BaseModel):
    family: str
    params: dict[str, Any]

    @property
    def label(self) -> str:
        return self.family + "(" + ", ".join(f"{k}={v}" for k, v in self.params.items()) + ")"


def candidates(families: list[str] | None = None) -> list[Candidate]:
    """Every grid point of the chosen families (all by default)."""
    chosen = families or list(ESTIMATORS)
    unknown = sorted(set(chosen) - set(ESTIMATORS))
    if unknown:
        raise ParameterError(f"--models: unknown model family {unknown} (choose from {list(ESTIMATORS)})")
    result = []
    for family in chosen:
        grid = GRIDS[family]
        for values in itertools.product(*grid.values()):
            result.append(Candidate(family=family, params=dict(zip(grid, values, strict=True))))
    return result


def build_pipeline(schema: TableSchema, candidate: Candidate, seed: int = 0) -> Pipeline:
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="most_frequent")),
            ("onehot", OneHotEncoder(handle_unknown="ignore")),
        ]
    )
    preprocess = ColumnTransformer(
        [("numeric", numeric, schema.numeric), ("categorical", categorical, schema.categorical)],
        remainder="drop",
    )
    estimator_cls = ESTIMATORS[candidate.family]
    params = dict(candidate.params)
    if "random_state" in estimator_cls().get_params():
        params["random_state"] = seed
    return Pipeline([("preprocess", preprocess), ("model", estimator_cls(**params))])


# estimators whose fit/predict cast X to float32: a value beyond float32's range becomes inf there
FLOAT32_ESTIMATORS = (
    BaseDecisionTree,
    RandomForestClassifier,
    ExtraTreesClassifier,
    GradientBoostingClassifier,
)


def input_limits(model: Pipeline, schema: TableSchema) -> tuple[str, dict[str, tuple[float, float]]]:
    """The closed range of raw values each numeric column may take so the estimator sees finite
    numbers: (dtype name, column -> (low, high)).

    The estimator computes in float32 (trees) or float64 on the *scaled* value (x - mean) / scale,
    so a finite float64 can still overflow there; a value outside its range is a 400 before it
    can join a batch. Without a fitted StandardScaler the range is the dtype's own."""
    estimator = model.steps[-1][1] if isinstance(model, Pipeline) else model
    dtype = np.float32 if isinstance(estimator, FLOAT32_ESTIMATORS) else np.float64
    top = float(np.finfo(dtype).max)
    limits = {column: (-top, top) for column in schema.numeric}
    try:
        scaler = model.named_steps["preprocess"].named_transformers_["numeric"].named_steps["scale"]
    except (AttributeError, KeyError):
        return np.dtype(dtype).name, limits
    if isinstance(scaler, StandardScaler) and hasattr(scaler, "scale_"):
        mean = scaler.mean_ if scaler.mean_ is not None else np.zeros(len(schema.numeric))
        with np.errstate(over="ignore"):
            spread = np.minimum(top * 0.5 * np.asarray(scaler.scale_, dtype=np.float64), 1e308)
        for column, centre, width in zip(schema.numeric, mean.tolist(), spread.tolist(), strict=True):
            # half the dtype's range: the estimator adds and multiplies these, keep headroom
            limits[column] = (max(centre - width, -1e308), min(centre + width, 1e308))
    return np.dtype(dtype).name, limits


def predict_proba_rows(model: Pipeline, frame: pd.DataFrame) -> tuple[np.ndarray, dict[int, str]]:
    """``model.predict_proba(frame)`` where one row the model cannot score fails only that row.

    Returns (proba (n, classes), {row: why}); a failed row's probabilities are NaN. A raising
    call is bisected, so k bad rows in n cost about k·log2(n) extra calls and good rows are
    scored as usual; a row whose probabilities are not finite (an overflow inside the model)
    fails too, since no client can use them."""
    proba = np.full((len(frame), len(model.classes_)), np.nan)
    failures: dict[int, str] = {}

    def score(lo: int, hi: int) -> None:  # rows [lo, hi)
        try:
            with np.errstate(all="ignore"):  # an overflow shows up as non-finite output below
                proba[lo:hi] = model.predict_proba(frame.iloc[lo:hi])
        except Exception as exc:  # whatever the estimator raises for an input it cannot take
            if hi - lo == 1:
                failures[lo] = f"{type(exc).__name__}: {exc}"
                return
            mid = (lo + hi) // 2
            score(lo, mid)
            score(mid, hi)

    if len(frame):
        score(0, len(frame))
    for row in np.flatnonzero(~np.isfinite(proba).all(axis=1)).tolist():
        failures.setdefault(row, "the model's probabilities for it are not finite numbers")
    return proba, failures


def features(frame: pd.DataFrame, schema: TableSchema) -> pd.DataFrame:
    return frame[list(schema.features)]


def classification_metrics(y_true: pd.Series, proba: np.ndarray, classes: list[str]) -> dict[str, float]:
    """accuracy, precision, recall, f1, roc_auc (binary: of the second class; else macro/ovr)."""
    y_true = np.asarray(y_true, dtype=object)
    y_pred = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    binary = len(classes) == 2
    average = "binary" if binary else "macro"
    extra = {"pos_label": classes[1]} if binary else {}
    scores = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "precision": skm.precision_score(y_true, y_pred, average=average, zero_division=0, **extra),
        "recall": skm.recall_score(y_true, y_pred, average=average, zero_division=0, **extra),
        "f1": skm.f1_score(y_true, y_pred, average=average, zero_division=0, **extra),
    }
    present = set(y_true)
    if len(present) < 2:
        scores["roc_auc"] = float("nan")
    elif binary:
        scores["roc_auc"] = skm.roc_auc_score(y_true == classes[1], proba[:, 1])
    else:
        scores["roc_auc"] = skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=classes)
    return {k: round(float(v), 6) for k, v in scores.items()}


def group_metrics(
    frame: pd.DataFrame, y_true: pd.Series, proba: np.ndarray, classes: list[str], group_column: str
) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """Metrics per value of ``group_column`` and the row count of each group."""
    groups = frame[group_column].astype(str).to_numpy()
    scores, sizes = {}, {}
    for group in sorted(set(groups)):
        mask = groups == group
        scores[group] = classification_metrics(y_true[mask], proba[mask], classes)
        sizes[group] = int(mask.sum())
    return scores, sizes


# scikit-learn's array-API adapter for torch: a package that imports torch and holds no estimator
_TORCH_SHIM = "sklearn.externals.array_api_compat.torch"


def _skops_io() -> Any:
    """``skops.io``, imported without torch. To list the estimators it trusts, skops imports every
    scikit-learn package, the torch adapter included, which imports torch: 2.4 of its 7 s and
    hundreds of MB in every promote step and classifier service. That one package is hidden
    during the import (the trusted list comes out the same) and restored after it."""
    import sys

    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    hidden = _TORCH_SHIM not in sys.modules
    if hidden:
        sys.modules[_TORCH_SHIM] = None  # type: ignore[assignment]  # an import of it: ImportError
    try:
        import skops.io as sio
    finally:
        if hidden and sys.modules.get(_TORCH_SHIM, ...) is None:
            del sys.modules[_TORCH_SHIM]
    return sio


def save_model(model: Pipeline, folder: Path) -> Path:
    sio = _skops_io()
    path = Path(folder) / MODEL_FILE
    sio.dump(model, path)
    return path


def load_model(folder: Path) -> Pipeline:
    """Load a model file written by :func:`save_model`; refuses any type outside the allowlist."""
    sio = _skops_io()

    path = Path(folder) / MODEL_FILE
    untrusted = set(sio.get_untrusted_types(file=path)) - set(TRUSTED_TYPES)
    if untrusted:
        raise ModelFileError(
            f"{path}: refusing to load untrusted types {sorted(untrusted)}; register the model again "
            "from a training run"
        )
    return sio.load(path, trusted=TRUSTED_TYPES)


def score_champion(
    name: str, schema: dict[str, Any], test_set: pd.DataFrame, target: str
) -> dict[str, Any] | None:
    """The champion's metrics on the candidate's test set, so the regression rule compares like
    with like; None when there is no champion or it was trained on other features or classes."""
    from llmops.gates import champion_scored
    from llmops.registry import Registry

    champion = Registry().find(name)
    if champion is None or champion.read_json("schema.json") != schema:
        return None
    model = load_model(champion.path)
    table = TableSchema(**schema)
    proba = model.predict_proba(features(test_set, table))
    scores = classification_metrics(test_set[target], proba, list(model.classes_))
    return champion_scored(champion.version, scores)
