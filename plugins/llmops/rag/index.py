"""Chroma collections named by index version, written whole or not at all.

An index version is a hash of (corpus version, chunking config, embedding model id): the same
documents, split the same way and embedded by the same model, give the same version, so a
build that finds its version already in the store has nothing to do.

A build writes into a scratch collection and renames it to the version when every chunk is in:
a failed or interrupted build never leaves a partial index under a real version. Embeddings are
reused by chunk content hash from the newest earlier index of the same chunking and model.

The store is a local persistent Chroma folder (``$LLMOPS_CHROMA_PATH``, default
``$LLMOPS_HOME/chroma``) or a Chroma server when ``$LLMOPS_CHROMA_URL`` is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from pydantic import BaseModel

from llmops import paths
from llmops.errors import LlmopsError
from llmops.rag.chunking import Chunk, ChunkingConfig

SCRATCH_PREFIX = "building-"


class IndexNotFound(LlmopsError, LookupError):
    """An index that cannot be found or opened; says which versions exist."""


class IndexInfo(BaseModel):
    version: str
    corpus_version: str
    chunking: ChunkingConfig
    embedding_model: str
    embedding_model_id: str
    chunks: int
    created_at: str = ""

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> IndexInfo:
        """The info a finished collection carries (see :meth:`collection_metadata`)."""
        chunking = {k: v for k, v in json.loads(meta["chunking"]).items() if k != "splitter"}
        return cls(
            version=meta["index_version"],
            corpus_version=meta["corpus_version"],
            chunking=ChunkingConfig(**chunking),
            embedding_model=meta["embedding_model"],
            embedding_model_id=meta["embedding_model_id"],
            chunks=int(meta["chunks"]),
            created_at=meta.get("created_at", ""),
        )

    def collection_metadata(self) -> dict[str, Any]:
        return {
            "index_version": self.version,
            "corpus_version": self.corpus_version,
            "chunking": self.chunking.key(),
            "embedding_model": self.embedding_model,
            "embedding_model_id": self.embedding_model_id,
            "chunks": self.chunks,
            "created_at": self.created_at or datetime.now(timezone.utc).isoformat(),
        }


def index_version(corpus_version: str, chunking: ChunkingConfig, embedding_model_id: str) -> str:
    key = "\0".join([corpus_version, chunking.key(), embedding_model_id])
    return "idx-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def default_chroma_path() -> Path:
    return paths.chroma_dir()


def chroma_location(path: str | None = None, url: str | None = None) -> str:
    """Where the store is, as recorded in releases: a server URL or an absolute folder. ``path``
    (a flow's --chroma: a folder or an http(s):// URL) wins over $LLMOPS_CHROMA_URL."""
    if path and path.startswith(("http://", "https://")):
        url, path = path, None
    url = url or (None if path else os.environ.get(paths.CHROMA_URL_ENV)) or None
    if url:
        return url
    return str(Path(path).expanduser().resolve() if path else default_chroma_path().resolve())


def chroma_client(location: str | None = None):
    """A client for ``location`` (http(s)://host:port for a server, else a folder)."""
    import chromadb

    location = location or chroma_location()
    settings = chromadb.Settings(anonymized_telemetry=False)
    if location.startswith(("http://", "https://")):
        parsed = urlparse(location)
        return chromadb.HttpClient(
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or (443 if parsed.scheme == "https" else 8000),
            ssl=parsed.scheme == "https",
            settings=settings,
        )
    Path(location).mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=location, settings=settings)


def list_indexes(client) -> list[dict[str, Any]]:
    """Metadata of every finished index in the store, newest first."""
    found = []
    for collection in client.list_collections():
        meta = collection.metadata or {}
        if meta.get("index_version") == collection.name:
            found.append(dict(meta))
    return sorted(found, key=lambda m: m.get("created_at", ""), reverse=True)


def open_index(client, version: str):
    """The finished collection of ``version``; an error lists the versions the store has."""
    from chromadb.errors import NotFoundError

    try:
        collection = client.get_collection(version)
    except (NotFoundError, ValueError):
        known = ", ".join(m["index_version"] for m in list_indexes(client)) or "none"
        raise IndexNotFound(f"index {version!r} is not in the Chroma store (it has: {known})") from None
    if (collection.metadata or {}).get("index_version") != version:  # a scratch or foreign collection
        known = ", ".join(m["index_version"] for m in list_indexes(client)) or "none"
        raise IndexNotFound(f"{version!r} is not a finished index (the store has: {known})")
    return collection


def previous_index(client, chunking: ChunkingConfig, embedding_model_id: str):
    """The newest finished index built with the same chunking and model, or None."""
    for meta in list_indexes(client):
        if meta.get("chunking") == chunking.key() and meta.get("embedding_model_id") == embedding_model_id:
            return client.get_collection(meta["index_version"])
    return None


def indexed_hashes(collection, page: int = 5000) -> set[str]:
    """Content hashes of every chunk in ``collection`` (metadata only: no vectors read)."""
    if collection is None:
        return set()
    hashes: set[str] = set()
    for offset in range(0, collection.count(), page):
        batch = collection.get(include=["metadatas"], limit=page, offset=offset)
        hashes.update(str(m.get("content_hash")) for m in batch["metadatas"])
    return hashes


def reusable_embeddings(collection, content_hashes: set[str], page: int = 5000) -> dict[str, np.ndarray]:
    """content hash -> embedding for the chunks of ``collection`` whose text is wanted again."""
    found: dict[str, np.ndarray] = {}
    if collection is None or not content_hashes:
        return found
    total = collection.count()
    for offset in range(0, total, page):
        batch = collection.get(include=["embeddings", "metadatas"], limit=page, offset=offset)
        for meta, vector in zip(batch["metadatas"], batch["embeddings"], strict=True):
            key = meta.get("content_hash")
            if key in content_hashes and key not in found:
                found[key] = np.asarray(vector, dtype=np.float32)
    return found


def plan_embedding(content_hashes: list[str], known: set[str]) -> list[int]:
    """Positions of the chunks to embed: the first of each text not in ``known``. Identical texts
    (licence headers, boilerplate repeated across files) are embedded once."""
    seen = set(known)
    positions = []
    for position, key in enumerate(content_hashes):
        if key not in seen:
            seen.add(key)
            positions.append(position)
    return positions


def assemble_vectors(
    content_hashes: list[str],
    embedded: list[tuple[list[int], np.ndarray]],
    reused: dict[str, np.ndarray],
) -> np.ndarray:
    """One row per chunk: from the shard that embedded its text, else reused by content hash."""
    by_hash = dict(reused)
    for positions, vectors in embedded:
        for position, vector in zip(positions, vectors, strict=True):
            by_hash[content_hashes[position]] = vector
    rows = [by_hash.get(key) for key in content_hashes]
    missing = sum(row is None for row in rows)
    if missing:
        raise LookupError(
            f"{missing} chunks have no embedding: the index they were to be reused from changed "
            f"during the build; run the build again"
        )
    return np.vstack(rows).astype(np.float32) if rows else np.zeros((0, 0), dtype=np.float32)


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def write_index(
    client,
    info: IndexInfo,
    chunks: list[Chunk],
    embeddings: np.ndarray,
    progress: Callable[[int, int], None] | None = None,
):
    """Store ``chunks`` with their ``embeddings`` (row i is chunk i) as collection ``info.version``."""
    if len(chunks) != len(embeddings):
        raise ValueError(f"{len(chunks)} chunks but {len(embeddings)} embeddings")
    scratch = client.create_collection(
        f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:12]}",
        configuration={"hnsw": {"space": "cosine"}},
        metadata={"building": info.version},
        embedding_function=None,
    )
    try:
        step = min(client.get_max_batch_size(), 5000)
        for part in _batches(len(chunks), step):
            batch = chunks[part]
            scratch.add(
                ids=[c.id for c in batch],
                embeddings=embeddings[part],
                documents=[c.text for c in batch],
                metadatas=[c.metadata() for c in batch],
            )
            if progress:
                progress(part.stop, len(chunks))
        scratch.modify(name=info.version, metadata=info.collection_metadata())
    except BaseException:
        client.delete_collection(scratch.name)
        raise
    return client.get_collection(info.version)


def drop_scratch(client) -> list[str]:
    """Remove collections left by builds that died before finishing; returns their names."""
    names = [c.name for c in client.list_collections() if c.name.startswith(SCRATCH_PREFIX)]
    for name in names:
        client.delete_collection(name)
    return names


# ---- export / import through S3 or a folder --------------------------------------------------
#
# <url>/<index version>/index.json       format, collection metadata and HNSW configuration,
#                                        rows, dimension, SHA-256 of the records file
# <url>/<index version>/records.parquet  id, document, metadata (JSON text), embedding (float32)
#
# Parquet and JSON only: nothing in an export is ever unpickled.

EXPORT_FORMAT = "llmops-index-export/1"
EXPORT_MANIFEST = "index.json"
EXPORT_RECORDS = "records.parquet"


class IndexTransferError(LlmopsError, ValueError):
    """An export that cannot be read or an import that would overwrite another index; says why."""


def export_index(client, index_version: str, url: str, page: int = 5000) -> str:
    """Write the finished index ``index_version`` under ``url`` (``s3://bucket/prefix`` or a folder)
    as ``<url>/<index_version>/``; returns that folder's URL."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmops.storage import file_sha256, open_store

    collection = open_index(client, index_version)
    store = open_store(url, "url").child(index_version)
    total, dimension = collection.count(), None
    schema = pa.schema(
        [("id", pa.string()), ("document", pa.string()), ("metadata", pa.string()),
         ("embedding", pa.list_(pa.float32()))]
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="llmops-index-export-") as tmp:
        records = Path(tmp) / EXPORT_RECORDS
        rows = 0
        with pq.ParquetWriter(records, schema) as writer:
            for offset in range(0, total, page):
                include = ["embeddings", "documents", "metadatas"]
                batch = collection.get(include=include, limit=page, offset=offset)
                vectors = np.asarray(batch["embeddings"], dtype=np.float32)  # Chroma hands back float64
                dimension = int(vectors.shape[1])
                table = pa.table(
                    {
                        "id": batch["ids"],
                        "document": batch["documents"],
                        "metadata": [json.dumps(m, sort_keys=True) for m in batch["metadatas"]],
                        "embedding": pa.array(list(vectors), type=pa.list_(pa.float32())),
                    },
                    schema=schema,
                )
                writer.write_table(table)
                rows += len(batch["ids"])
        if rows != total or collection.count() != total:
            raise IndexTransferError(f"index {index_version!r} changed during the export; export it again")
        store.upload_file(records, EXPORT_RECORDS)
        manifest = {
            "format": EXPORT_FORMAT,
            "index_version": index_version,
            "metadata": collection.metadata,
            "configuration": {"hnsw": (collection.configuration or {}).get("hnsw")},
            "rows": rows,
            "dimension": dimension,
            "records": EXPORT_RECORDS,
            "records_sha256": file_sha256(records),
            "exported_at": datetime.now(timezone.utc).isoformat(),
        }
    store.write_bytes(EXPORT_MANIFEST, json.dumps(manifest, indent=1).encode())  # last: marks it complete
    return store.url


def read_export_manifest(url: str) -> dict[str, Any]:
    """The ``index.json`` of the export at ``url`` (its folder, or the file itself), checked."""
    from llmops.storage import StorageNotFound, as_location, open_store

    url = as_location(url).rstrip("/")
    if url.endswith("/" + EXPORT_MANIFEST):
        url = url[: -len(EXPORT_MANIFEST) - 1]
    store = open_store(url, "url")
    where = store.join(EXPORT_MANIFEST)
    try:
        manifest = json.loads(store.read_bytes(EXPORT_MANIFEST))
    except StorageNotFound:
        raise IndexTransferError(f"url: {where} does not exist (not an index export)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexTransferError(f"{where}: not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise IndexTransferError(f"{where}: format: expected {EXPORT_FORMAT!r}")
    version, metadata = manifest.get("index_version"), manifest.get("metadata")
    if not isinstance(version, str) or not version or version.startswith(SCRATCH_PREFIX):
        raise IndexTransferError(f"{where}: index_version: {version!r} is not an index version")
    if not isinstance(metadata, dict) or metadata.get("index_version") != version:
        raise IndexTransferError(f"{where}: metadata: must name index_version {version!r}")
    if manifest.get("records") != EXPORT_RECORDS or not isinstance(manifest.get("rows"), int):
        raise IndexTransferError(f"{where}: records, rows: missing or invalid")
    manifest["url"] = store.url
    return manifest


def import_index(client, url: str):
    """Restore the export at ``url`` into the store of ``client`` under its index version; returns
    the collection. An identical index already there is kept (nothing written); a different
    collection of that name is never overwritten."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmops.storage import file_sha256, open_store

    manifest = read_export_manifest(url)
    version, metadata, where = manifest["index_version"], manifest["metadata"], manifest["url"]
    if version in {c.name for c in client.list_collections()}:
        existing = client.get_collection(version)
        if existing.metadata == metadata and existing.count() == manifest["rows"]:
            return existing
        raise IndexTransferError(
            f"the Chroma store already has a different collection named {version!r}; not overwritten"
        )
    store = open_store(where, "url")
    where = store.join(EXPORT_RECORDS)
    with tempfile.TemporaryDirectory(prefix="llmops-index-import-") as tmp:
        records = store.download_file(EXPORT_RECORDS, Path(tmp) / EXPORT_RECORDS)
        if file_sha256(records) != manifest.get("records_sha256"):
            raise IndexTransferError(f"{where}: SHA-256 differs from index.json (corrupt or replaced)")
        try:
            data = pq.ParquetFile(records)
        except pa.ArrowException as exc:
            raise IndexTransferError(f"{where}: not Parquet: {exc}") from None
        missing = {"id", "document", "metadata", "embedding"} - set(data.schema_arrow.names)
        if missing or data.metadata.num_rows != manifest["rows"]:
            raise IndexTransferError(f"{where}: missing {sorted(missing)} or rows != {manifest['rows']}")
        hnsw = (manifest.get("configuration") or {}).get("hnsw") or {"space": "cosine"}
        scratch = client.create_collection(
            f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:12]}",
            configuration={"hnsw": hnsw},
            metadata={"building": version},
            embedding_function=None,
        )
        try:
            step = min(client.get_max_batch_size(), 5000)
            for batch in data.iter_batches(batch_size=step):
                columns = batch.to_pydict()
                scratch.add(
                    ids=columns["id"],
                    embeddings=np.asarray(columns["embedding"], dtype=np.float32),
                    documents=columns["document"],
                    metadatas=[json.loads(m) for m in columns["metadata"]],
                )
            scratch.modify(name=version, metadata=metadata)
        except BaseException:
            client.delete_collection(scratch.name)
            raise
    return client.get_collection(version)


def exported_indexes(url: str) -> list[dict[str, Any]]:
    """The manifests of the index exports directly under ``url``, newest export first."""
    from llmops.storage import open_store

    store = open_store(url, "url")
    found = []
    for name in store.folders():
        if store.exists(f"{name}/{EXPORT_MANIFEST}"):
            found.append(read_export_manifest(store.join(name)))
    return sorted(found, key=lambda m: str(m.get("exported_at", "")), reverse=True)
