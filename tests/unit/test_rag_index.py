"""The Chroma index (llmops.rag.index) in a real store on disk: written under its content-addressed
version and opened by it, never left half-written, and the embeddings an earlier index holds are
reused instead of computed again."""

import numpy as np
import pytest

from llmops.rag.chunking import ChunkingConfig
from llmops.rag.documents import load_corpus
from llmops.rag.index import (
    SCRATCH_PREFIX,
    IndexInfo,
    IndexNotFound,
    assemble_vectors,
    chroma_client,
    index_version,
    indexed_hashes,
    list_indexes,
    open_index,
    plan_embedding,
    previous_index,
    reusable_embeddings,
    write_index,
)
from tests.unit.rag_corpus import CHUNKING, DOCS, make_info


def scratch_names(client):
    return [c.name for c in client.list_collections() if c.name.startswith(SCRATCH_PREFIX)]


def test_written_index_opens_by_version(store, chunks, corpus, embedder):
    client, info, _ = store
    collection = open_index(client, info.version)
    assert collection.name == info.version
    assert collection.count() == len(chunks)
    stored = IndexInfo.from_metadata(collection.metadata)
    assert stored.model_dump(exclude={"created_at"}) == info.model_dump(exclude={"created_at"})
    assert stored.created_at  # stamped at write time
    got = collection.get(ids=[chunks[0].id], include=["documents", "metadatas"])
    assert got["documents"] == [chunks[0].text]
    assert got["metadatas"][0]["content_hash"] == chunks[0].content_hash
    listed = list_indexes(client)
    assert [m["index_version"] for m in listed] == [info.version]
    assert listed[0]["corpus_version"] == corpus.version
    assert listed[0]["embedding_model_id"] == embedder.model_id
    assert scratch_names(client) == []


def test_unknown_version_lists_the_known_ones(store):
    client, info, _ = store
    with pytest.raises(IndexNotFound, match=rf"'idx-000000000000' .*it has: {info.version}"):
        open_index(client, "idx-000000000000")


def test_empty_store_says_none(tmp_path):
    with pytest.raises(IndexNotFound, match=r"it has: none"):
        open_index(chroma_client(str(tmp_path / "chroma")), "idx-000000000000")


def test_failed_writes_leave_no_collection(tmp_path, corpus, chunks, vectors, embedder):
    client = chroma_client(str(tmp_path / "chroma"))
    info = make_info(corpus, chunks, embedder)
    with pytest.raises(ValueError, match=rf"{len(chunks)} chunks but {len(chunks) - 1} embeddings"):
        write_index(client, info, chunks, vectors[:-1])
    assert scratch_names(client) == [] and list_indexes(client) == []

    def interrupted(done, total):
        raise RuntimeError(f"interrupted after {done} of {total}")

    with pytest.raises(RuntimeError, match="interrupted after"):
        write_index(client, info, chunks, vectors, progress=interrupted)
    assert client.list_collections() == []
    with pytest.raises(IndexNotFound):
        open_index(client, info.version)

    seen = []
    write_index(client, info, chunks, vectors, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (len(chunks), len(chunks))
    assert open_index(client, info.version).count() == len(chunks)
    assert scratch_names(client) == []


def test_index_version_follows_corpus_chunking_and_model(corpus, embedder):
    def version(corpus_version=corpus.version, model_id=embedder.model_id, **chunking):
        config = ChunkingConfig(**{**CHUNKING.model_dump(), **chunking})
        return index_version(corpus_version, config, model_id)

    base = index_version(corpus.version, CHUNKING, embedder.model_id)
    assert base.startswith("idx-") and version() == base
    assert version(chunk_size=400) != base
    assert version(chunk_overlap=60) != base
    assert version(corpus_version="corpus-000000000000") != base
    assert version(model_id="other-model@000000000000") != base


def test_index_version_changes_when_a_document_changes(tmp_path, embedder):
    root = tmp_path / "docs"
    root.mkdir()
    for name, text in list(DOCS.items())[:3]:
        (root / name).write_text(text)
    before = index_version(load_corpus(root).version, CHUNKING, embedder.model_id)
    assert index_version(load_corpus(root).version, CHUNKING, embedder.model_id) == before
    (root / "chess.md").write_text(DOCS["chess.md"] + "\nThe queen is the strongest piece.\n")
    assert index_version(load_corpus(root).version, CHUNKING, embedder.model_id) != before


def test_previous_index_matches_chunking_and_model(store, embedder):
    client, info, _ = store
    found = previous_index(client, CHUNKING, embedder.model_id)
    assert found is not None and found.name == info.version
    assert previous_index(client, ChunkingConfig(chunk_size=500, chunk_overlap=50), embedder.model_id) is None
    assert previous_index(client, CHUNKING, "other-model@000000000000") is None


def test_previous_index_is_the_newest(tmp_path, corpus, chunks, vectors, embedder):
    client = chroma_client(str(tmp_path / "chroma"))
    old = make_info(corpus, chunks, embedder, created_at="2024-01-01T00:00:00+00:00")
    write_index(client, old, chunks, vectors)
    newer_chunks = chunks[:-1]
    newer = old.model_copy(
        update={
            "version": "idx-newer0000000",
            "chunks": len(newer_chunks),
            "created_at": "2025-01-01T00:00:00+00:00",
        }
    )
    write_index(client, newer, newer_chunks, vectors[:-1])
    assert [m["index_version"] for m in list_indexes(client)] == [newer.version, old.version]
    assert previous_index(client, CHUNKING, embedder.model_id).name == newer.version


def test_stored_hashes_and_vectors_are_reused(store, chunks, vectors):
    _, _, collection = store
    hashes = [c.content_hash for c in chunks]
    assert indexed_hashes(collection) == set(hashes)
    assert indexed_hashes(collection, page=2) == set(hashes)  # paged reads see every chunk
    assert indexed_hashes(None) == set()

    wanted = {hashes[0], hashes[3], hashes[-1], "0" * 64}
    reused = reusable_embeddings(collection, wanted, page=3)
    assert set(reused) == wanted - {"0" * 64}
    for key, vector in reused.items():
        row = hashes.index(key)
        assert vector.dtype == np.float32
        # the vector as written; Chroma's cosine space renormalizes it, which on some CPUs moves
        # a component by one float32 ulp
        np.testing.assert_allclose(vector, vectors[row], rtol=0, atol=1e-7)
    assert reusable_embeddings(collection, set()) == {}
    assert reusable_embeddings(None, {hashes[0]}) == {}


def test_shards_get_every_position_once_and_enough_chunks_to_pay_for_their_model_load():
    from llmops.rag.index import MIN_CHUNKS_PER_SHARD, shard_positions

    assert shard_positions([], 4) == [[]]  # nothing to embed: one empty shard, the write step still runs
    assert shard_positions(list(range(40)), 4) == [list(range(40))]  # a small corpus: one model load
    many = list(range(3 * MIN_CHUNKS_PER_SHARD - 1))
    plan = shard_positions(many, 8)
    assert len(plan) == 3 and sorted(p for shard in plan for p in shard) == many
    assert min(len(shard) for shard in plan) >= MIN_CHUNKS_PER_SHARD - 1
    assert len(shard_positions(many, 2)) == 2  # never more than asked


def test_assemble_vectors_takes_shards_then_reused_rows():
    rng = np.random.default_rng(7)
    shard_a, shard_b, kept = (rng.normal(size=(n, 4)).astype(np.float32) for n in (2, 1, 2))
    hashes = ["h0", "h1", "h2", "h3", "h1"]  # h1 twice: both rows reuse the same vector
    rows = assemble_vectors(hashes, [([0, 2], shard_a), ([3], shard_b)], {"h1": kept[0], "h0": kept[1]})
    assert rows.shape == (5, 4) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows[0], shard_a[0])  # a shard's row wins over a reused one
    np.testing.assert_array_equal(rows[2], shard_a[1])
    np.testing.assert_array_equal(rows[3], shard_b[0])
    np.testing.assert_array_equal(rows[1], kept[0])
    np.testing.assert_array_equal(rows[4], kept[0])

    with pytest.raises(LookupError, match="1 chunks have no embedding"):
        assemble_vectors(hashes[:4], [([0, 2], shard_a), ([3], shard_b)], {"h0": kept[1], "h9": kept[0]})
    with pytest.raises(LookupError, match="2 chunks have no embedding"):
        assemble_vectors(["a", "b"], [], {})


def test_identical_texts_are_embedded_once():
    hashes = ["a", "b", "a", "c", "b", "d"]
    plan = plan_embedding(hashes, known={"c"})
    assert plan == [0, 1, 5]  # the first of each new text; "c" is reused
    vectors = np.eye(4, dtype=np.float32)
    rows = assemble_vectors(hashes, [(plan, vectors[:3])], {"c": vectors[3]})
    np.testing.assert_array_equal(rows, vectors[[0, 1, 0, 3, 1, 2]])
    assert plan_embedding(hashes, known=set(hashes)) == []


def test_a_scratch_collection_is_not_an_index(tmp_path):
    from llmops.rag.index import IndexNotFound, chroma_client, open_index

    client = chroma_client(str(tmp_path / "store"))
    client.create_collection("building-0123", embedding_function=None)
    with pytest.raises(IndexNotFound, match="not a finished index"):
        open_index(client, "building-0123")
