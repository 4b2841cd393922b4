"""Chroma collections named by index version, written whole or not at all.

An index version is a hash of (corpus version, chunking config, embedding model id): the same
documents, split the same way and embedded by the same model, give the same version, so a
build that finds its version already in the store has nothing to do.

A build writes into a scratch collection and renames it to the version when every chunk is in:
a failed or interrupted build never leaves a partial index under a real version. Embeddings are
reused by chunk content hash from the newest earlier index of the same chunking and model.

The store is a local persistent Chroma folder (``$LLMOPS_CHROMA_PATH``, default
``$LLMOPS_HOME/chroma``) or a Chroma server when ``$LLMOPS_CHROMA_URL`` is set. Moving an index
between stores (export/import through S3 or a folder) is :mod:`llmops.rag.index_transfer`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    url = url or (None if path else paths.chroma_url()) or None
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


MIN_CHUNKS_PER_SHARD = 256  # each shard loads the model (~10 s on a CPU): about what it embeds in that time


def shard_positions(positions: list[int], shards: int) -> list[list[int]]:
    """``positions`` dealt round-robin over at most ``shards`` embedding tasks, each given at least
    ``MIN_CHUNKS_PER_SHARD`` (a smaller shard costs more in model loading than it saves); one
    shard, possibly empty, when there is nothing or little to embed."""
    width = max(1, min(shards, -(-len(positions) // MIN_CHUNKS_PER_SHARD)))
    return [positions[i::width] for i in range(width)]


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


@contextmanager
def scratch_collection(
    client,
    version: str,
    metadata: Callable[[], dict[str, Any]],
    hnsw: dict[str, Any] | None = None,
) -> Iterator[Any]:
    """A scratch collection to fill, renamed to ``version`` (with ``metadata()``, called then, so a
    timestamp it stamps is the finish time) when the block ends, deleted when it raises: readers
    never see a half-written index under a real version, whatever interrupts the writer."""
    scratch = client.create_collection(
        f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:12]}",
        configuration={"hnsw": hnsw or {"space": "cosine"}},
        metadata={"building": version},
        embedding_function=None,
    )
    try:
        yield scratch
        scratch.modify(name=version, metadata=metadata())
    except BaseException:
        client.delete_collection(scratch.name)
        raise


def write_index(
    client,
    info: IndexInfo,
    chunks: list[Chunk],
    embeddings: np.ndarray,
    progress: Callable[[int, int], None] | None = None,
):
    """Store ``chunks`` with their ``embeddings`` (row i is chunk i) as collection ``info.version``."""
    if len(chunks) != len(embeddings):
        # programming error: the flow embeds exactly the chunks it writes
        raise ValueError(f"{len(chunks)} chunks but {len(embeddings)} embeddings")
    with scratch_collection(client, info.version, info.collection_metadata) as scratch:
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
    return client.get_collection(info.version)


def drop_scratch(client) -> list[str]:
    """Remove collections left by builds that died before finishing; returns their names."""
    names = [c.name for c in client.list_collections() if c.name.startswith(SCRATCH_PREFIX)]
    for name in names:
        client.delete_collection(name)
    return names
