"""Move finished indexes between Chroma stores through S3 or a folder.

    llmops index export idx-0123456789ab s3://llmops/indexes
    llmops index import s3://llmops/indexes/idx-0123456789ab --chroma http://chroma:8000

An export is two objects under ``<url>/<index version>/``:

- ``records.parquet``: id, document, metadata (JSON text) and float32 embedding of every chunk;
- ``index.json`` (:class:`IndexExportManifest`): the collection's metadata and HNSW configuration,
  the row count, the dimension and the SHA-256 of the records file. Written last: its presence
  means the export is complete.

Parquet and JSON only: nothing in an export is ever unpickled. An import checks the checksum and
fills a scratch collection that becomes the index version only when every row is in
(:func:`llmops.rag.index.scratch_collection`), so an interrupted import leaves nothing behind.
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from llmops.errors import LlmopsError, field_problems
from llmops.rag.index import SCRATCH_PREFIX, open_index, scratch_collection
from llmops.storage import StorageNotFound, as_location, file_sha256, open_store

EXPORT_FORMAT = "llmops-index-export/1"
EXPORT_MANIFEST = "index.json"
EXPORT_RECORDS = "records.parquet"
_COLUMNS = ("id", "document", "metadata", "embedding")


class IndexTransferError(LlmopsError, ValueError):
    """An export that cannot be read or an import that would overwrite another index; says why."""


class IndexExportManifest(BaseModel):
    format: Literal["llmops-index-export/1"]
    index_version: str
    metadata: dict[str, Any]  # the finished collection's metadata (see IndexInfo.collection_metadata)
    configuration: dict[str, Any] | None = None  # {"hnsw": ...} as the collection was configured
    rows: int = Field(strict=True)
    dimension: int | None = None  # None for an empty index
    records: str  # the records file's name, beside the manifest
    records_sha256: str
    exported_at: str = ""
    url: str = Field(default="", exclude=True)  # where it was read from; not written


def export_index(client, index_version: str, url: str, page: int = 5000) -> str:
    """Write the finished index ``index_version`` under ``url`` (``s3://bucket/prefix`` or a folder)
    as ``<url>/<index_version>/``; returns that folder's URL."""
    import pyarrow as pa
    import pyarrow.parquet as pq

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
        manifest = IndexExportManifest(
            format=EXPORT_FORMAT,
            index_version=index_version,
            metadata=collection.metadata,
            configuration={"hnsw": (collection.configuration or {}).get("hnsw")},
            rows=rows,
            dimension=dimension,
            records=EXPORT_RECORDS,
            records_sha256=file_sha256(records),
            exported_at=datetime.now(timezone.utc).isoformat(),
        )
    store.write_bytes(EXPORT_MANIFEST, manifest.model_dump_json(indent=1).encode())  # last: complete
    return store.url


def read_export_manifest(url: str) -> IndexExportManifest:
    """The ``index.json`` of the export at ``url`` (its folder, or the file itself), checked; its
    ``url`` is the export's folder."""
    url = as_location(url).rstrip("/")
    if url.endswith("/" + EXPORT_MANIFEST):
        url = url[: -len(EXPORT_MANIFEST) - 1]
    store = open_store(url, "url")
    where = store.join(EXPORT_MANIFEST)
    try:
        raw = json.loads(store.read_bytes(EXPORT_MANIFEST))
    except StorageNotFound:
        raise IndexTransferError(f"url: {where} does not exist (not an index export)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexTransferError(f"{where}: not JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != EXPORT_FORMAT:
        raise IndexTransferError(f"{where}: format: expected {EXPORT_FORMAT!r}")
    try:
        manifest = IndexExportManifest.model_validate(raw)
    except ValidationError as exc:
        raise IndexTransferError(f"{where}: {field_problems(exc)}") from None
    version = manifest.index_version
    if not version or version.startswith(SCRATCH_PREFIX):
        raise IndexTransferError(f"{where}: index_version: {version!r} is not an index version")
    if manifest.metadata.get("index_version") != version:
        raise IndexTransferError(f"{where}: metadata: must name index_version {version!r}")
    if manifest.records != EXPORT_RECORDS:
        raise IndexTransferError(f"{where}: records: expected {EXPORT_RECORDS!r}")
    return manifest.model_copy(update={"url": store.url})


def import_index(client, url: str):
    """Restore the export at ``url`` into the store of ``client`` under its index version; returns
    the collection. An identical index already there is kept (nothing written); a different
    collection of that name is never overwritten."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = read_export_manifest(url)
    version, metadata = manifest.index_version, manifest.metadata
    if version in {c.name for c in client.list_collections()}:
        existing = client.get_collection(version)
        if existing.metadata == metadata and existing.count() == manifest.rows:
            return existing
        raise IndexTransferError(
            f"the Chroma store already has a different collection named {version!r}; not overwritten"
        )
    store = open_store(manifest.url, "url")
    where = store.join(EXPORT_RECORDS)
    with tempfile.TemporaryDirectory(prefix="llmops-index-import-") as tmp:
        records = store.download_file(EXPORT_RECORDS, Path(tmp) / EXPORT_RECORDS)
        if file_sha256(records) != manifest.records_sha256:
            raise IndexTransferError(f"{where}: SHA-256 differs from index.json (corrupt or replaced)")
        try:
            data = pq.ParquetFile(records)
        except pa.ArrowException as exc:
            raise IndexTransferError(f"{where}: not Parquet: {exc}") from None
        missing = set(_COLUMNS) - set(data.schema_arrow.names)
        if missing or data.metadata.num_rows != manifest.rows:
            raise IndexTransferError(f"{where}: missing {sorted(missing)} or rows != {manifest.rows}")
        hnsw = (manifest.configuration or {}).get("hnsw")
        with scratch_collection(client, version, lambda: metadata, hnsw) as scratch:
            step = min(client.get_max_batch_size(), 5000)
            for batch in data.iter_batches(batch_size=step):
                columns = batch.to_pydict()
                scratch.add(
                    ids=columns["id"],
                    embeddings=np.asarray(columns["embedding"], dtype=np.float32),
                    documents=columns["document"],
                    metadatas=[json.loads(m) for m in columns["metadata"]],
                )
    return client.get_collection(version)


def exported_indexes(url: str) -> list[IndexExportManifest]:
    """The manifests of the index exports directly under ``url``, newest export first."""
    store = open_store(url, "url")
    found = []
    for name in store.folders():
        if store.exists(f"{name}/{EXPORT_MANIFEST}"):
            found.append(read_export_manifest(store.join(name)))
    return sorted(found, key=lambda m: m.exported_at, reverse=True)
