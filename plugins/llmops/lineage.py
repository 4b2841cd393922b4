"""Lineage: where a registered artifact came from."""

from __future__ import annotations

import subprocess
from pathlib import Path


def code_version(path: str | Path = ".") -> str:
    """``git:<sha>`` (``+dirty`` with uncommitted changes), or ``unknown`` outside a checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=path,
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path,
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"git:{sha}{'+dirty' if dirty else ''}"
