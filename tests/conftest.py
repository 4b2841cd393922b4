"""Shared fixtures. The whole session uses a private BentoML home, set before anything
imports bentoml, so tests never touch ~/bentoml; model names are unique per test."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_STATE = Path(tempfile.mkdtemp(prefix="llmops-tests-"))
atexit.register(shutil.rmtree, _STATE, ignore_errors=True)
os.environ["BENTOML_HOME"] = str(_STATE / "bentoml")
# Flow runs use the repo's ./.metaflow (git-ignored), as a user's runs do: Metaflow 2.19's
# card store ignores METAFLOW_CARD_LOCALROOT and a moved local sysroot when reading cards.
os.environ["LLMOPS_HOME"] = str(_STATE / "llmops")
os.environ.setdefault("METAFLOW_USER", "tests")
os.environ["BENTOML_DO_NOT_TRACK"] = "True"
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture
def model_name() -> str:
    """A registry name no other test uses (tests share one BentoML home)."""
    return "clf-" + uuid.uuid4().hex[:8]


def find_free_port() -> int:
    """A port on 127.0.0.1 that the OS says is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    return find_free_port()


def run_flow(
    flow: str, *args: str, timeout: int = 420, top: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """``python flows/<flow> <top> run <args>`` from the repo root, as a user would; ``top``
    holds options that come before ``run`` (e.g. ``--config policy FILE``)."""
    return subprocess.run(
        [sys.executable, str(REPO / "flows" / flow), "--no-pylint", *top, "run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )
