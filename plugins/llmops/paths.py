"""Where llmops keeps its files: one home, and every root under it, decided here and nowhere else.

    $LLMOPS_HOME (default ./.llmops, relative to where you run; ``~`` is expanded)
      chroma/          the persistent Chroma store          $LLMOPS_CHROMA_PATH overrides
      inference-log/   what the services answered          $LLMOPS_INFERENCE_LOG_DIR overrides (or s3://)
      checkpoints/     fine-tune checkpoints                $LLMOPS_CHECKPOINT_ROOT overrides (or s3://)
      models/          base models built or converted here (the tiny model, SmolLM2)
      prompts/         a snapshot of every prompt version seen
      golden/          per golden set: snapshots of its versions, curation decisions, fine-tune records
      retraining/      training sets that the drift monitor assembles

The project's own files (``prompts/``, ``docs/``, like ``flows/`` and ``evals/``) are found in the
project folder, the working directory, never beside the installed package: a wheel installed with
``pip install .`` has no repository around it. ``$LLMOPS_PROMPTS_DIR`` names another prompts folder.
The BentoML home (``$BENTOML_HOME``, default ``~/bentoml``) holds the model store and the aliases.

Every function returns an absolute path (or the ``s3://`` URL an override names), read (through
``llmops.settings``) at call time, so a test or a flow step that sets ``LLMOPS_HOME`` sees its own home.
"""

from __future__ import annotations

from pathlib import Path

from llmops.settings import value

HOME_ENV = "LLMOPS_HOME"
DEFAULT_HOME = ".llmops"
CHROMA_ENV = "LLMOPS_CHROMA_PATH"
CHROMA_URL_ENV = "LLMOPS_CHROMA_URL"  # a Chroma server instead of the folder
INFERENCE_LOG_ENV = "LLMOPS_INFERENCE_LOG_DIR"
CHECKPOINT_ENV = "LLMOPS_CHECKPOINT_ROOT"
PROMPTS_ENV = "LLMOPS_PROMPTS_DIR"
BENTOML_HOME_ENV = "BENTOML_HOME"
DEFAULT_BENTOML_HOME = "~/bentoml"  # BentoML's own default


def home() -> Path:
    """``$LLMOPS_HOME`` (``~`` expanded), else ``./.llmops``; absolute."""
    return Path(value(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()


def _override(env: str) -> Path | str | None:
    """An explicit location from ``env``: an ``s3://`` URL as it is, a folder expanded and absolute."""
    location = value(env)
    if location is None:
        return None
    return location if location.startswith("s3://") else Path(location).expanduser().resolve()


def chroma_dir() -> Path:
    override = _override(CHROMA_ENV)
    return Path(override) if override is not None else home() / "chroma"


def chroma_overridden() -> bool:
    """The environment names a Chroma store (a folder or a server) that wins over a release's own."""
    return bool(value(CHROMA_ENV) or value(CHROMA_URL_ENV))


def chroma_url() -> str | None:
    """``$LLMOPS_CHROMA_URL``: a Chroma server (``http://host:port``) instead of the folder."""
    return value(CHROMA_URL_ENV)


def inference_log_root() -> Path | str:
    """A folder, or an ``s3://bucket/prefix`` URL."""
    override = _override(INFERENCE_LOG_ENV)
    return override if override is not None else home() / "inference-log"


def checkpoints_root() -> Path | str:
    """A folder, or an ``s3://bucket/prefix`` URL (``llm.checkpoints`` may put it beside an S3 datastore)."""
    override = _override(CHECKPOINT_ENV)
    return override if override is not None else home() / "checkpoints"


def checkpoints_overridden() -> bool:
    """``$LLMOPS_CHECKPOINT_ROOT`` is set: it wins over a place beside an S3 datastore."""
    return value(CHECKPOINT_ENV) is not None


def models_dir() -> Path:
    return home() / "models"


def prompt_snapshots_dir() -> Path:
    """Snapshots of every prompt version seen (the templates themselves live in ``prompts/``)."""
    return home() / "prompts"


def golden_dir() -> Path:
    """Per golden set (``golden/<name>/``): a snapshot of every version replaced by a curation, the
    accept/reject decisions, and the fine-tune records of accepted corrections."""
    return home() / "golden"


def retraining_dir() -> Path:
    return home() / "retraining"


def project_dir() -> Path:
    """The project folder: where you run, as for ``python flows/<flow>.py`` and ``evals/``."""
    return Path.cwd()


def prompts_dir() -> Path:
    """The prompt templates: ``$LLMOPS_PROMPTS_DIR``, else the project's ``prompts/``."""
    override = _override(PROMPTS_ENV)
    return Path(override) if override is not None else project_dir() / "prompts"


def docs_dir() -> Path:
    """The project's ``docs/`` (the default corpus)."""
    return project_dir() / "docs"


def bentoml_home() -> Path:
    """``$BENTOML_HOME`` (``~`` expanded), else ``~/bentoml``: the model store lives there."""
    return Path(value(BENTOML_HOME_ENV) or DEFAULT_BENTOML_HOME).expanduser()


def aliases_dir() -> Path:
    """The registry's aliases and their history, one JSON file per model name."""
    return bentoml_home() / "llmops" / "aliases"
