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
