"""Where llmops keeps its files: one home, and every root under it, decided here and nowhere else.

    $LLMOPS_HOME (default ./.llmops, relative to where you run; ``~`` is expanded)
      chroma/          the persistent Chroma store          $LLMOPS_CHROMA_PATH overrides
      inference-log/   what the services answered          $LLMOPS_INFERENCE_LOG_DIR overrides (or s3://)
      checkpoints/     fine-tune checkpoints                $LLMOPS_CHECKPOINT_ROOT overrides (or s3://)
      models/          base models built or converted here (the tiny model, SmolLM2)
      prompts/         a snapshot of every prompt version seen
      retraining/      training sets that the drift monitor assembles

Every function returns an absolute path (or the ``s3://`` URL an override names), read from the
environment at call time, so a test or a flow step that sets ``LLMOPS_HOME`` sees its own home.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "LLMOPS_HOME"
DEFAULT_HOME = ".llmops"
CHROMA_ENV = "LLMOPS_CHROMA_PATH"
CHROMA_URL_ENV = "LLMOPS_CHROMA_URL"  # a Chroma server instead of the folder
INFERENCE_LOG_ENV = "LLMOPS_INFERENCE_LOG_DIR"
CHECKPOINT_ENV = "LLMOPS_CHECKPOINT_ROOT"


def home() -> Path:
    """``$LLMOPS_HOME`` (``~`` expanded), else ``./.llmops``; absolute."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()


def _override(env: str) -> Path | str | None:
    """An explicit location from ``env``: an ``s3://`` URL as it is, a folder expanded and absolute."""
    value = os.environ.get(env)
    if not value:
        return None
    return value if value.startswith("s3://") else Path(value).expanduser().resolve()


def chroma_dir() -> Path:
    override = _override(CHROMA_ENV)
    return Path(override) if override is not None else home() / "chroma"


def chroma_overridden() -> bool:
    """The environment names a Chroma store (a folder or a server) that wins over a release's own."""
    return bool(os.environ.get(CHROMA_ENV) or os.environ.get(CHROMA_URL_ENV))


def inference_log_root() -> Path | str:
    """A folder, or an ``s3://bucket/prefix`` URL."""
    override = _override(INFERENCE_LOG_ENV)
    return override if override is not None else home() / "inference-log"


def checkpoints_root() -> Path | str:
    """A folder, or an ``s3://bucket/prefix`` URL (``llm.checkpoints`` may put it beside an S3 datastore)."""
    override = _override(CHECKPOINT_ENV)
    return override if override is not None else home() / "checkpoints"


def models_dir() -> Path:
    return home() / "models"


def prompt_snapshots_dir() -> Path:
    """Snapshots of every prompt version seen (the templates themselves live in ``prompts/``)."""
    return home() / "prompts"


def retraining_dir() -> Path:
    return home() / "retraining"
