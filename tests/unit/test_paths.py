"""One home for every llmops path: ``~`` expanded, overrides honoured, absolute answers."""

from pathlib import Path

from llmops import paths


def test_home_expands_the_user_folder_and_every_root_lies_under_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LLMOPS_HOME", "~/state")
    for env in (paths.CHROMA_ENV, paths.INFERENCE_LOG_ENV, paths.CHECKPOINT_ENV):
        monkeypatch.delenv(env, raising=False)
    home = tmp_path / "state"
    assert paths.home() == home  # not a literal '~' folder under the working directory
    assert paths.chroma_dir() == home / "chroma"
    assert paths.inference_log_root() == home / "inference-log"
    assert paths.checkpoints_root() == home / "checkpoints"
    assert paths.models_dir() == home / "models"
    assert paths.prompt_snapshots_dir() == home / "prompts"
    assert paths.retraining_dir() == home / "retraining"


def test_the_default_home_is_dot_llmops_where_you_run(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMOPS_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert paths.home() == tmp_path.resolve() / ".llmops"
    assert paths.home().is_absolute()


def test_overrides_win_and_s3_urls_stay_urls(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(paths.CHROMA_ENV, "~/vectors")
    monkeypatch.setenv(paths.INFERENCE_LOG_ENV, "s3://bucket/log")
    monkeypatch.setenv(paths.CHECKPOINT_ENV, "s3://bucket/ckpt")
    assert paths.chroma_dir() == Path(tmp_path) / "vectors"
    assert paths.inference_log_root() == "s3://bucket/log"
    assert paths.checkpoints_root() == "s3://bucket/ckpt"


def test_project_files_are_found_where_you_run_not_beside_the_package(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.PROMPTS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert paths.project_dir() == tmp_path.resolve()
    assert paths.prompts_dir() == tmp_path.resolve() / "prompts"
    assert paths.docs_dir() == tmp_path.resolve() / "docs"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(paths.PROMPTS_ENV, "~/templates")
    assert paths.prompts_dir() == tmp_path / "templates"


def test_the_bentoml_home_holds_the_aliases(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("BENTOML_HOME", raising=False)
    assert paths.bentoml_home() == tmp_path / "bentoml"  # BentoML's own default
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "store"))
    assert paths.aliases_dir() == tmp_path / "store" / "llmops" / "aliases"


def test_an_empty_override_counts_as_unset(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path))
    for env in (paths.CHROMA_URL_ENV, paths.CHROMA_ENV, paths.CHECKPOINT_ENV):
        monkeypatch.setenv(env, "")
    assert paths.chroma_url() is None and not paths.chroma_overridden()
    assert not paths.checkpoints_overridden() and paths.checkpoints_root() == tmp_path / "checkpoints"
    monkeypatch.setenv(paths.CHROMA_URL_ENV, "http://127.0.0.1:8000")
    monkeypatch.setenv(paths.CHECKPOINT_ENV, "s3://bucket/ckpt")
    assert paths.chroma_url() == "http://127.0.0.1:8000" and paths.chroma_overridden()
    assert paths.checkpoints_overridden()
