"""Metaflow loads a flow's file in every task process and every card process of a run: what the
file imports at its top is paid a dozen times per run, so it imports no data or model library."""

from pathlib import Path

import pytest

from tests.fresh_process import imported_by

FLOWS = sorted((Path(__file__).resolve().parents[2] / "flows").glob("*.py"))
HEAVY = ("pandas", "sklearn", "torch", "transformers", "matplotlib", "chromadb", "bentoml")


@pytest.mark.parametrize("flow", FLOWS, ids=[f.name for f in FLOWS])
def test_loading_a_flow_file_imports_no_data_or_model_library(flow):
    code = (
        "import importlib.util; "
        f"spec = importlib.util.spec_from_file_location('flow', {str(flow)!r}); "
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))"
    )
    assert imported_by(code, HEAVY) == []
