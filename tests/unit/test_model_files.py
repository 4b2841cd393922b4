"""Classifier model files (skops): what is saved loads back to the same predictions, a file with
a type outside the allowlist is refused, and reading them does not drag torch into the process."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import skops.io as sio
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from llmops.tabular.classifier import MODEL_FILE, load_model, save_model
from tests.conftest import REPO

X = np.random.default_rng(0).normal(size=(40, 3))
Y = (X[:, 0] > 0).astype(int)


class Shifted(BaseEstimator, TransformerMixin):
    """A transformer no allowlist knows: what a tampered or foreign model file would carry."""

    def fit(self, x, y=None):
        return self

    def transform(self, x):
        return x + 1


def test_a_saved_model_loads_back_to_the_same_predictions(tmp_path):
    model = Pipeline([("model", LogisticRegression())]).fit(X, Y)
    assert save_model(model, tmp_path) == tmp_path / MODEL_FILE
    assert np.array_equal(load_model(tmp_path).predict_proba(X), model.predict_proba(X))


def test_a_model_file_with_a_type_outside_the_allowlist_is_refused(tmp_path):
    sio.dump(
        Pipeline([("shift", Shifted()), ("model", LogisticRegression())]).fit(X, Y), tmp_path / MODEL_FILE
    )
    with pytest.raises(ValueError, match=r"refusing to load untrusted types \[.*test_model_files.Shifted'\]"):
        load_model(tmp_path)


def test_model_files_are_read_and_written_without_importing_torch(tmp_path):
    """skops lists the estimators it trusts by importing every scikit-learn package, the torch
    adapter among them; a promote step or a classifier service must not pay for torch."""
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from sklearn.linear_model import LogisticRegression
        from llmops.tabular.classifier import load_model, save_model
        x = np.arange(20.0).reshape(10, 2)
        save_model(LogisticRegression().fit(x, [0, 1] * 5), {str(tmp_path)!r})
        load_model({str(tmp_path)!r})
        assert "torch" not in sys.modules, "torch was imported"
        import sklearn.externals.array_api_compat.torch  # still importable where it is wanted
        assert "torch" in sys.modules
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
