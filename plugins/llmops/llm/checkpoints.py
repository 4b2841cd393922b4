"""Training checkpoints that outlive a task: a retried task, a ``resume``d run or an identical
new run picks up where the last one stopped instead of starting over.

Checkpoints are content-addressed like everything else here: the key is a hash of what decides
the training (base model fingerprint, dataset version, the training split, the training settings),
so a checkpoint is only ever continued by a run that would have produced it. That is why they are
not scoped to a Metaflow task or run: ``resume`` makes a new run, and a retry on another machine
(``@batch``) sees nothing of the first attempt's disk.

The store is a folder on this machine, or ``s3://bucket/prefix`` when the flow's datastore is S3
(:mod:`llmops.storage`). Layout: ``<root>/<key>/checkpoint-<step>/…`` plus ``<key>/LATEST``
holding the step, written after the files, so a half-uploaded checkpoint is never picked up.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from llmops import paths
from llmops.storage import StorageNotFound, open_store

LATEST = "LATEST"


def checkpoint_key(parts: dict[str, Any]) -> str:
    """``ckpt-`` + a hash of everything that decides the training."""
    body = json.dumps(parts, sort_keys=True, default=str)
    return "ckpt-" + hashlib.sha256(body.encode()).hexdigest()[:16]


def default_root(datastore_type: str | None = None, datastore_root: str | None = None) -> str:
    """``$LLMOPS_CHECKPOINT_ROOT``; else beside the flow's S3 datastore; else ``$LLMOPS_HOME/checkpoints``."""
    if paths.checkpoints_overridden():
        return str(paths.checkpoints_root())
    if datastore_type == "s3" and datastore_root:
        return datastore_root.rstrip("/") + "/llmops/checkpoints"
    return str(paths.checkpoints_root())


class CheckpointStore:
    """The latest checkpoint per key, in a local folder or under an ``s3://`` prefix."""

    def __init__(self, root: str):
        self.root = root
        self._store = open_store(root, field="checkpoint root")

    def __repr__(self) -> str:
        return f"CheckpointStore({self.root!r})"

    def latest(self, key: str) -> int | None:
        """The step of the newest complete checkpoint for ``key``, or None."""
        try:
            text = self._store.read_bytes(f"{key}/{LATEST}").decode().strip()
        except StorageNotFound:
            return None
        return int(text) if text.isdigit() else None

    def download(self, key: str, step: int, target: Path) -> Path:
        """Copy checkpoint ``step`` of ``key`` into ``target/checkpoint-<step>``; returns that folder."""
        folder = Path(target) / f"checkpoint-{step}"
        self._store.download_dir(f"{key}/checkpoint-{step}", folder)
        return folder

    def upload(self, key: str, step: int, folder: Path) -> None:
        """Store ``folder`` as checkpoint ``step`` of ``key``, mark it latest, drop the older one."""
        previous = self.latest(key)
        self._store.upload_dir(Path(folder), f"{key}/checkpoint-{step}")
        self._store.write_bytes(f"{key}/{LATEST}", str(step).encode())
        if previous is not None and previous != step:
            self._store.delete(f"{key}/checkpoint-{previous}")
