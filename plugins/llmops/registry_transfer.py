"""Move registered versions between BentoML homes through S3 or a folder.

    llmops models export classifier s3://llmops/registry            # the champion
    llmops models import s3://llmops/registry/classifier-<version>.bentomodel --promote

An export is two objects under the destination prefix:

- ``<name>-<version>.bentomodel``: BentoML's own archive (``bentoml.models.export_model``: an xz
  tar of the version's folder, ``model.yaml`` with its labels and lineage metadata plus the model
  files), written to a local temporary file and uploaded;
- ``<name>-<version>.manifest.json``: what the archive holds (name, version, labels, metadata),
  the aliases that pointed at it when exported, and the SHA-256 of the archive and of each file.

An import checks the archive against its manifest when there is one, unpacks it itself (regular
files and folders only, every path inside the archive's root, no pickled ``custom_objects.pkl``:
nothing in an archive is ever unpickled) and adds the version to the active BentoML home with its
version id, metadata and files. A version already in the store is left alone when its files are
identical (a no-op, reported as such) and refused when they differ. ``aliases`` then move through
the registry's compare-and-set path, like a promotion.
"""

from __future__ import annotations

import lzma
import re
import shutil
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import bentoml
import yaml
from pydantic import BaseModel, ValidationError

from llmops.errors import field_problems
from llmops.registry import ModelVersion, Registry, RegistryError, check_name
from llmops.storage import StorageNotFound, as_location, file_sha256, open_store

FORMAT = "llmops-model-export/1"
ARCHIVE_EXT = ".bentomodel"
MANIFEST_EXT = ".manifest.json"
_REFUSED_FILES = {"custom_objects.pkl"}  # BentoML unpickles it on access
_VERSION = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")


class ExportManifest(BaseModel):
    format: Literal["llmops-model-export/1"]
    name: str
    version: str
    archive: str  # the archive's file name, beside the manifest
    archive_sha256: str
    files: dict[str, str]  # path inside the version folder -> SHA-256
    aliases: list[str]  # the aliases that pointed at this version when it was exported
    labels: dict[str, str]
    metadata: dict[str, Any]
    exported_at: str


class ImportResult(BaseModel):
    version: ModelVersion
    imported: bool  # False: the store already had this version with the same files
    moved: dict[str, str | None]  # alias -> the version it pointed at before
    manifest: ExportManifest | None


def export_version(name: str, ref: str, url: str) -> tuple[str, ExportManifest]:
    """Write ``name:ref`` (a version id, an alias or ``latest``) under ``url`` (``s3://bucket/prefix``
    or a folder); returns the archive's URL and the manifest written beside it."""
    registry = Registry()
    version = registry.get(name, ref)
    store = open_store(url, "url")
    stem = f"{version.name}-{version.version}"
    with tempfile.TemporaryDirectory(prefix="llmops-export-") as tmp:
        archive = Path(bentoml.models.export_model(version.tag, str(Path(tmp) / f"{stem}{ARCHIVE_EXT}")))
        manifest = ExportManifest(
            format=FORMAT,
            name=version.name,
            version=version.version,
            archive=archive.name,
            archive_sha256=file_sha256(archive),
            files=folder_digests(version.path),
            aliases=sorted(a for a, v in registry.aliases(name).items() if v == version.version),
            labels=version.labels,
            metadata=version.metadata,
            exported_at=datetime.now(timezone.utc).isoformat(),
        )
        store.upload_file(archive, archive.name)  # the manifest last: its presence means complete
    store.write_bytes(f"{stem}{MANIFEST_EXT}", manifest.model_dump_json(indent=1).encode())
    return store.join(archive.name), manifest


def import_version(url: str, aliases: list[str] | tuple[str, ...] = ()) -> ImportResult:
    """Add the version exported at ``url`` (its ``.bentomodel`` or ``.manifest.json``) to the active
    BentoML home, then point each of ``aliases`` at it (compare-and-set)."""
    for alias in aliases:
        check_name(alias, "--alias")
    url = as_location(url).rstrip("/")
    parent, _, filename = url.rpartition("/")
    if not filename.endswith((ARCHIVE_EXT, MANIFEST_EXT)):
        raise RegistryError(f"url: {url!r} must name a {ARCHIVE_EXT} archive or a {MANIFEST_EXT} manifest")
    store = open_store(parent or ".", "url")
    manifest = _read_manifest(store, filename)
    archive_name = manifest.archive if manifest else filename
    registry = Registry()
    with tempfile.TemporaryDirectory(prefix="llmops-import-") as tmp:
        archive = Path(tmp) / "archive"
        try:
            store.download_file(archive_name, archive)
        except StorageNotFound:
            raise RegistryError(f"url: {store.join(archive_name)} does not exist") from None
        if manifest and file_sha256(archive) != manifest.archive_sha256:
            raise RegistryError(
                f"{store.join(archive_name)}: SHA-256 differs from its manifest (corrupt or replaced)"
            )
        folder = _unpack(archive, Path(tmp) / "model", store.join(archive_name))
        name, version_id = _identify(folder, store.join(archive_name), manifest)
        before = {alias: registry.aliases(name).get(alias) for alias in aliases}
        existing = registry.find(name, version_id)
        if existing is not None:
            if folder_digests(existing.path) != folder_digests(folder):
                raise RegistryError(
                    f"{name}:{version_id} is already in the store with different files; not imported"
                )
            imported = False
        else:
            bentoml.models.import_model(str(folder), input_format="folder")
            imported = True
    version = registry.get(name, version_id)
    moved = {
        alias: registry.set_alias(name, alias, version_id, expected=before[alias], action="promote")
        for alias in aliases
    }
    return ImportResult(version=version, imported=imported, moved=moved, manifest=manifest)


def folder_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by POSIX path relative to it."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _read_manifest(store, filename: str) -> ExportManifest | None:
    """The manifest named by ``filename``, or the one beside the archive ``filename`` (optional)."""
    is_manifest = filename.endswith(MANIFEST_EXT)
    key = filename if is_manifest else filename[: -len(ARCHIVE_EXT)] + MANIFEST_EXT
    try:
        raw = store.read_bytes(key)
    except StorageNotFound:
        if is_manifest:
            raise RegistryError(f"url: {store.join(key)} does not exist") from None
        return None  # a bare archive (e.g. from `bentoml models export`): no checksum to check
    try:
        manifest = ExportManifest.model_validate_json(raw)
    except ValidationError as exc:
        problems = field_problems(exc)
        raise RegistryError(f"{store.join(key)}: not an llmops export manifest: {problems}") from None
    if PurePosixPath(manifest.archive).name != manifest.archive or not manifest.archive.endswith(ARCHIVE_EXT):
        raise RegistryError(f"{store.join(key)}: archive: {manifest.archive!r} must be a file name beside it")
    return manifest


def _unpack(archive: Path, target: Path, where: str) -> Path:
    """Extract a ``.bentomodel`` (xz tar) into ``target``, refusing anything but plain files and
    folders under its root. Done here rather than by BentoML so that nothing is trusted blindly."""
    target.mkdir(parents=True)
    try:
        with tarfile.open(archive, mode="r:xz") as tar:
            for member in tar:
                parts = [p for p in PurePosixPath(member.name).parts if p != "."]
                if member.name.startswith("/") or ".." in parts:
                    raise RegistryError(f"{where}: refusing {member.name!r}, a path outside the archive")
                if not (member.isfile() or member.isdir()):
                    raise RegistryError(f"{where}: refusing {member.name!r}, not a plain file or folder")
                if parts and parts[-1] in _REFUSED_FILES:
                    raise RegistryError(f"{where}: refusing {member.name!r}: pickles are never imported")
                path = target.joinpath(*parts)
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise RegistryError(f"{where}: cannot read {member.name!r}")
                with source, open(path, "wb") as sink:
                    shutil.copyfileobj(source, sink)
    except (tarfile.TarError, lzma.LZMAError, EOFError) as exc:
        raise RegistryError(f"{where}: not a BentoML model archive (.bentomodel, xz tar): {exc}") from None
    return target


def _identify(folder: Path, where: str, manifest: ExportManifest | None) -> tuple[str, str]:
    """(name, version) from the archive's ``model.yaml``, checked against the manifest."""
    try:
        info = yaml.safe_load((folder / "model.yaml").read_text())
    except FileNotFoundError:
        raise RegistryError(f"{where}: not a BentoML model archive (no model.yaml)") from None
    except yaml.YAMLError as exc:
        raise RegistryError(f"{where}: model.yaml is not valid YAML: {exc}") from None
    if not isinstance(info, dict) or not isinstance(info.get("version"), str):
        raise RegistryError(f"{where}: model.yaml: name and version are missing")
    name, version = check_name(str(info.get("name")), "model.yaml: name"), info["version"]
    if not _VERSION.match(version) or version == "latest" or version in Registry().aliases(name):
        raise RegistryError(f"{where}: model.yaml: version: {version!r} is not a version id")
    if manifest and (manifest.name, manifest.version) != (name, version):
        raise RegistryError(
            f"{where}: holds {name}:{version} but its manifest says {manifest.name}:{manifest.version}"
        )
    if manifest and folder_digests(folder) != manifest.files:
        raise RegistryError(f"{where}: its files differ from the manifest's checksums")
    return name, version


def describe(result: ImportResult) -> str:
    """One line per fact, for the command line."""
    lines = [
        f"imported {result.version.tag}"
        if result.imported
        else f"{result.version.tag} is already in the store with the same files: nothing imported"
    ]
    if result.manifest and result.manifest.aliases:
        lines.append(f"aliases at export: {', '.join(result.manifest.aliases)} (moved here only by --alias)")
    for alias, previous in result.moved.items():
        lines.append(f"{result.version.name}@{alias}: {previous or '(unset)'} -> {result.version.version}")
    return "\n".join(lines)
