"""Model registry on the BentoML model store.

Versions are BentoML models: immutable folders with labels and metadata (the lineage:
run pathspec, dataset version, code version, metrics, gate decision). Aliases
(``champion``, ``challenger``, …) are movable names kept per model in
``$BENTOML_HOME/llmops/aliases/<name>.json`` together with their history.

Moving an alias takes a cross-process file lock, re-reads the file, checks the
caller's expectation (compare-and-set) and replaces the file atomically, so two
processes promoting at once leave one valid alias and never a torn file; readers
need no lock.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import bentoml
from filelock import FileLock
from pydantic import BaseModel

from llmops import paths, settings
from llmops.errors import LlmopsError

CHAMPION = "champion"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
# a BentoML tag's version (it lower-cases what it is given); checked here so that a bad one is an answer
_VERSION = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$", re.IGNORECASE)
_UNSET: Any = object()


class RegistryError(LlmopsError):
    """A registry request that cannot be done; the message says why and what to do."""


class AliasConflict(RegistryError):
    """The alias moved since the caller looked at it (another promotion won the race)."""


class ModelVersion(BaseModel):
    name: str
    version: str
    created_at: datetime
    path: Path
    labels: dict[str, str]
    metadata: dict[str, Any]

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"

    def read_json(self, filename: str) -> Any:
        return json.loads((self.path / filename).read_text())


def check_name(name: str, field: str = "name") -> str:
    if not _NAME.match(name):
        raise RegistryError(
            f"{field}: {name!r} is not a valid model name (lowercase letters, digits, '_', '-', '.')"
        )
    return name


def check_version(version: str, name: str) -> str:
    """``version``: a version id, an alias or ``latest``, refused before it reaches the store."""
    if not _VERSION.match(version):
        raise RegistryError(
            f"version: {version!r} is not a version id or an alias of {name!r} (letters, digits, "
            f"'_', '-', '.'; see: llmops models list {name})"
        )
    return version


class Registry:
    """Registered model versions and their aliases, in the active BentoML home."""

    def __init__(self) -> None:
        self.alias_dir = paths.aliases_dir()

    # ---- versions -------------------------------------------------------------------------

    def register(
        self,
        name: str,
        write_files: Callable[[Path], None],
        *,
        metadata: dict[str, Any],
        labels: dict[str, str] | None = None,
        json_files: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Create a new immutable version: ``write_files(folder)`` writes the model files."""
        check_name(name)
        with bentoml.models.create(name, labels=labels or {}, metadata=metadata) as model:
            folder = Path(model.path)
            write_files(folder)
            for filename, payload in (json_files or {}).items():
                (folder / filename).write_text(json.dumps(payload, indent=1, default=str))
        return self._version(bentoml.models.get(model.tag))

    def get(self, name: str, ref: str = CHAMPION) -> ModelVersion:
        """A version by alias, by version id, or ``latest``."""
        check_name(name)
        aliases = self.aliases(name)
        version = check_version(aliases.get(ref, ref), name)
        try:
            return self._version(bentoml.models.get(f"{name}:{version}"))
        except bentoml.exceptions.NotFound:
            if ref in aliases:
                raise RegistryError(f"{name}@{ref} points at {version}, which is not in the store") from None
            if ref == CHAMPION:
                raise RegistryError(
                    f"{name!r} has no champion yet: its training or evaluation flow promotes one "
                    f"(e.g. python flows/train_classifier.py run, python flows/evaluate_rag.py run)"
                ) from None
            raise RegistryError(f"model {name}:{ref} not found (see: llmops models list)") from None

    def find(self, name: str, ref: str = CHAMPION) -> ModelVersion | None:
        try:
            return self.get(name, ref)
        except RegistryError:
            return None

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        models = bentoml.models.list(name) if name else bentoml.models.list()
        found = [self._version(m) for m in models]
        return sorted(found, key=lambda m: (m.name, m.created_at))

    @staticmethod
    def _version(model: bentoml.Model) -> ModelVersion:
        info = model.info
        return ModelVersion(
            name=model.tag.name,
            version=str(model.tag.version),
            created_at=info.creation_time,
            path=Path(model.path),
            labels=dict(info.labels),
            metadata=dict(info.metadata),
        )

    # ---- aliases --------------------------------------------------------------------------

    def _alias_file(self, name: str) -> Path:
        return self.alias_dir / f"{check_name(name)}.json"

    def _read(self, name: str) -> dict[str, Any]:
        path = self._alias_file(name)
        if not path.exists():
            return {"aliases": {}, "history": []}
        return json.loads(path.read_text())

    def aliases(self, name: str) -> dict[str, str]:
        return dict(self._read(name)["aliases"])

    def history(self, name: str) -> list[dict[str, Any]]:
        return list(self._read(name)["history"])

    def set_alias(
        self,
        name: str,
        alias: str,
        version: str,
        *,
        expected: str | None = _UNSET,
        action: str = "promote",
    ) -> str | None:
        """Point ``alias`` at ``version``; returns the version it pointed at before.

        With ``expected``, the move happens only if the alias still points there
        (``None``: only if it is unset); otherwise :class:`AliasConflict`.
        """
        check_name(alias, "alias")
        version = self.get(name, version).version  # an alias or "latest" resolves to the id it means now
        path = self._alias_file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=60):
            state = self._read(name)
            previous = state["aliases"].get(alias)
            if expected is not _UNSET and previous != expected:
                raise AliasConflict(
                    f"{name}@{alias} moved to {previous} since {expected} was read; not moved. "
                    f"Re-run the gate against the new {alias}."
                )
            state["aliases"][alias] = version
            state["history"].append(
                {
                    "action": action,
                    "alias": alias,
                    "version": version,
                    "previous": previous,
                    "at": datetime.now(timezone.utc).isoformat(),
                    "by": settings.value("USER") or "",
                }
            )
            _atomic_write(path, json.dumps(state, indent=1))
        return previous

    def promote(
        self, name: str, version: str, *, alias: str = CHAMPION, expected: str | None = _UNSET
    ) -> str | None:
        return self.set_alias(name, alias, version, expected=expected, action="promote")

    def rollback(self, name: str, alias: str = CHAMPION) -> str:
        """Move ``alias`` back to the version it pointed at before its last promotion."""
        state = self._read(name)
        current = state["aliases"].get(alias)
        if current is None:
            raise RegistryError(f"{name}@{alias} is not set: nothing to roll back")
        for event in reversed(state["history"]):
            if event["alias"] == alias and event["action"] == "promote" and event["version"] == current:
                target = event["previous"]
                break
        else:
            target = None
        if target is None:
            raise RegistryError(f"{name}@{alias} has no earlier version to roll back to")
        self.set_alias(name, alias, target, expected=current, action="rollback")
        return target


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
