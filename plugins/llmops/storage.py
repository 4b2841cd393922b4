"""URL-addressed storage: ``s3://bucket/prefix`` or a local folder, behind one small interface.

    store = open_store("s3://llmops/exports")       # or open_store("/data/exports")
    store.write_bytes("a/manifest.json", b"{}")
    store.upload_file(Path("model.bentomodel"), "a/model.bentomodel")
    store.list("a")                                 # ["a/manifest.json", "a/model.bentomodel"]

Keys are relative POSIX paths under the store's root; a key that is absolute or walks out with
``..`` is refused, so a path from a user (or an object name from a bucket) stays inside its root.

S3 goes through boto3, which takes the endpoint from ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` (and credentials from its usual chain); when neither is set,
``METAFLOW_S3_ENDPOINT_URL`` is used, so a Metaflow S3 setup (MinIO, moto, ...) works unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path, PurePath
from typing import Any

from llmops import settings
from llmops.errors import LlmopsError

ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # boto3 reads these itself
METAFLOW_ENDPOINT_ENV = "METAFLOW_S3_ENDPOINT_URL"
# S3's bucket naming rule (general purpose buckets): 3-63 of a-z 0-9 . -, alphanumeric at both ends
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class StorageError(LlmopsError, ValueError):
    """A location or key that cannot be used, or a store that refused a request; says which."""


class StorageNotFound(StorageError, FileNotFoundError):
    """No object or file at that key."""


def is_s3_url(location: str | PathLike[str] | None) -> bool:
    """``s3://...``; also a ``Path`` built from one, which pathlib has collapsed to ``s3:/...``
    (settings typed as ``Path`` do that to an ``s3://`` value)."""
    if location is None:
        return False
    if isinstance(location, PurePath):
        return str(location).startswith("s3:/")
    return str(location).startswith("s3://")


def as_location(location: str | PathLike[str]) -> str:
    """The location as a string, with a pathlib-collapsed ``s3:/bucket`` restored to ``s3://bucket``."""
    if isinstance(location, PurePath) and is_s3_url(location):
        return "s3://" + str(location)[len("s3:/") :]
    return os.fspath(location)


def check_key(key: str, field: str = "path") -> str:
    """A relative POSIX key that stays under its root (``""`` is the root itself)."""
    if not isinstance(key, str):
        raise StorageError(f"{field}: expected a string, got {type(key).__name__}")
    key = key.strip("/") if not key.startswith("/") else key
    if not key:
        return ""
    if key.startswith("/") or "\\" in key or "\0" in key:
        raise StorageError(f"{field}: {key!r} must be a relative path with '/' separators")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise StorageError(f"{field}: {key!r} must not contain '..', '.' or empty segments")
    return key


def parse_s3_url(url: str, field: str = "url") -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``; the prefix may be empty."""
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise StorageError(f"{field}: {url!r} is not an s3://bucket/prefix URL")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise StorageError(
            f"{field}: {bucket!r} in {url!r} is not a valid S3 bucket name "
            f"(3-63 lowercase letters, digits, '.' and '-')"
        )
    if "?" in prefix or "#" in prefix:
        raise StorageError(f"{field}: {url!r} must not carry a query or fragment")
    return bucket, check_key(prefix, field)


def open_store(location: str | PathLike[str], field: str = "url") -> Store:
    """A store rooted at ``location``: an ``s3://`` URL or a local folder (created on first write)."""
    location = as_location(location)
    if not location:
        raise StorageError(f"{field}: must not be empty")
    if location.startswith("s3://"):
        bucket, prefix = parse_s3_url(location, field)
        return S3Store(bucket, prefix)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", location):
        raise StorageError(f"{field}: {location!r}: only s3:// URLs and local folders are supported")
    return LocalStore(Path(location).expanduser())


class Store(ABC):
    """Files under one root, addressed by relative keys (see :func:`check_key`)."""

    url: str
    can_append = False  # S3 objects are immutable: writers that append write new objects instead

    def join(self, key: str) -> str:
        """The URL (or path) of ``key``."""
        key = check_key(key, "key")
        return f"{self.url.rstrip('/')}/{key}" if key else self.url

    def child(self, key: str) -> Store:
        """The store rooted at ``key`` under this one."""
        return open_store(self.join(key))

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    def append_bytes(self, key: str, data: bytes) -> None:
        """Add ``data`` at the end of the file at ``key`` (created when missing); only where
        :attr:`can_append`."""
        raise StorageError(f"{self.join(key)}: this store cannot append; write a new key instead")

    @abstractmethod
    def upload_file(self, local: Path, key: str) -> None: ...

    @abstractmethod
    def download_file(self, key: str, local: Path) -> Path: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the file at ``key`` and everything under it (nothing there: nothing to do)."""

    @abstractmethod
    def list(self, key: str = "") -> list[str]:
        """Keys of every file under ``key`` (recursively), relative to the root, sorted."""

    @abstractmethod
    def folders(self, key: str = "") -> list[str]:
        """Names of the folders directly under ``key``, sorted."""

    def exists(self, key: str) -> bool:
        try:
            self.read_head(key)
        except StorageNotFound:
            return False
        return True

    @abstractmethod
    def read_head(self, key: str) -> int:
        """The size of the file at ``key``; :class:`StorageNotFound` if there is none."""

    def upload_dir(self, local: Path, key: str = "") -> list[str]:
        """Every file under the local folder ``local``, to the same relative keys under ``key``."""
        local = Path(local)
        if not local.is_dir():
            raise StorageError(f"local folder {local} does not exist")
        key = check_key(key, "key")
        written = []
        for path in sorted(p for p in local.rglob("*") if p.is_file() and not p.is_symlink()):
            target = "/".join(filter(None, [key, path.relative_to(local).as_posix()]))
            self.upload_file(path, target)
            written.append(target)
        return written

    def download_dir(self, key: str, local: Path) -> list[Path]:
        """Every file under ``key`` into the local folder ``local`` (at the same relative paths)."""
        key = check_key(key, "key")
        local = Path(local)
        found = []
        for name in self.list(key):
            relative = name[len(key) + 1 :] if key else name
            found.append(self.download_file(name, local / check_key(relative, "key")))
        if not found:
            raise StorageNotFound(f"{self.join(key)}: nothing there")
        return found


class LocalStore(Store):
    can_append = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        key = check_key(key, "key")
        return self.root / key if key else self.root

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StorageNotFound(f"{path}: no such file") from None

    def read_head(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise StorageNotFound(f"{path}: no such file")
        return path.stat().st_size

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._replacing(self._path(key)) as tmp:
            tmp.write_bytes(data)

    def append_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as handle:  # one write per call: lines of one call never interleave
            handle.write(data)

    def upload_file(self, local: Path, key: str) -> None:
        with self._replacing(self._path(key)) as tmp:
            shutil.copyfile(local, tmp)

    def download_file(self, key: str, local: Path) -> Path:
        source = self._path(key)
        if not source.is_file():
            raise StorageNotFound(f"{source}: no such file")
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, local)
        return local

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path == self.root:
            raise StorageError(f"{path}: refusing to delete the store's root")
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def list(self, key: str = "") -> list[str]:
        base = self._path(key)
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".tmp"))
        )

    def folders(self, key: str = "") -> list[str]:
        base = self._path(key)
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    @staticmethod
    @contextmanager
    def _replacing(path: Path) -> Iterator[Path]:
        """A temporary file beside ``path`` that replaces it atomically when the block succeeds."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str = "") -> None:
        self.bucket, self.prefix = bucket, check_key(prefix, "prefix")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def _key(self, key: str) -> str:
        key = check_key(key, "key")
        return "/".join(filter(None, [self.prefix, key]))

    def read_bytes(self, key: str) -> bytes:
        with self._errors(key):
            return s3_client().get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def read_head(self, key: str) -> int:
        with self._errors(key):
            return int(s3_client().head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._errors(key):
            s3_client().put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def upload_file(self, local: Path, key: str) -> None:
        with self._errors(key):
            s3_client().upload_file(str(local), self.bucket, self._key(key))

    def download_file(self, key: str, local: Path) -> Path:
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        with self._errors(key):
            s3_client().download_file(self.bucket, self._key(key), str(local))
        return local

    def delete(self, key: str) -> None:
        if not check_key(key, "key"):
            raise StorageError(f"{self.url}: refusing to delete the store's root")
        names = ([key] if self.exists(key) else []) + self.list(key)
        for start in range(0, len(names), 1000):  # DeleteObjects takes up to 1,000 keys
            batch = [{"Key": self._key(name)} for name in names[start : start + 1000]]
            with self._errors(key):
                s3_client().delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def list(self, key: str = "") -> list[str]:
        prefix = self._key(key)
        found = []
        for item in self._pages(prefix + "/" if prefix else "", delimiter=None):
            for obj in item.get("Contents", []):
                name = obj["Key"][len(self.prefix) + 1 :] if self.prefix else obj["Key"]
                if name and not name.endswith("/"):  # "folder" marker objects hold nothing
                    found.append(name)
        return sorted(found)

    def folders(self, key: str = "") -> list[str]:
        prefix = self._key(key)
        prefix = prefix + "/" if prefix else ""
        names = set()
        for item in self._pages(prefix, delimiter="/"):
            for common in item.get("CommonPrefixes", []):
                names.add(common["Prefix"][len(prefix) :].rstrip("/"))
        return sorted(n for n in names if n)

    def _pages(self, prefix: str, delimiter: str | None) -> Iterator[dict[str, Any]]:
        kwargs = {"Bucket": self.bucket, "Prefix": prefix} | ({"Delimiter": delimiter} if delimiter else {})
        with self._errors(where=f"s3://{self.bucket}/{prefix}"):
            yield from s3_client().get_paginator("list_objects_v2").paginate(**kwargs)

    @contextmanager
    def _errors(self, key: str = "", where: str = "") -> Iterator[None]:
        """botocore's errors as :class:`StorageError` naming the URL (never the credentials)."""
        from botocore.exceptions import BotoCoreError, ClientError

        where = where or (f"s3://{self.bucket}/{self._key(key)}" if key else self.url)
        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise StorageNotFound(f"{where}: no such object") from None
            if code == "NoSuchBucket":
                raise StorageError(f"{where}: bucket {self.bucket!r} does not exist") from None
            raise StorageError(f"{where}: S3 refused the request ({code or exc})") from None
        except BotoCoreError as exc:
            raise StorageError(f"{where}: {exc}") from None


_clients: dict[tuple[str | None, ...], Any] = {}
_clients_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def s3_endpoint() -> str | None:
    """The endpoint boto3 is told about: None when boto3 finds it itself (``AWS_ENDPOINT_URL*``)."""
    if any(settings.value(name) for name in ENDPOINT_ENVS):
        return None
    return settings.value(METAFLOW_ENDPOINT_ENV)


def s3_client() -> Any:
    """One boto3 S3 client per endpoint and credentials (clients are thread-safe; making them is not)."""
    import boto3

    endpoint = s3_endpoint()
    key = (
        endpoint,
        *(settings.value(name) for name in ENDPOINT_ENVS),
        *(settings.value(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_DEFAULT_REGION")),
    )
    with _clients_lock:
        if key not in _clients:
            _clients[key] = boto3.session.Session().client("s3", endpoint_url=endpoint)
        return _clients[key]
