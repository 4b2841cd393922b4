"""Retrieval (llmops.rag.retriever, with lexical.py, its BM25 half) over a real index of a small
corpus: the right document first in every mode, scores that are cosine similarities, filters, bad
requests and settings named, and the LangChain retriever."""

import pytest

from llmops.rag.retriever import MAX_K, RetrievalError, Retriever
from tests.unit.rag_corpus import QUESTIONS


@pytest.mark.parametrize("source", sorted(QUESTIONS))
def test_the_right_document_ranks_first(retriever, source):
    hits = retriever.retrieve(QUESTIONS[source], k=5)
    assert len(hits) == 5
    assert hits[0].source == source
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert hits[0].score > hits[-1].score
    assert len({h.id for h in hits}) == len(hits)


def test_hits_carry_the_stored_chunk(retriever, chunks, embedder):
    by_id = {c.id: c for c in chunks}
    question = QUESTIONS["astronomy.md"]
    hit = retriever.retrieve(question, k=1)[0]
    chunk = by_id[hit.id]
    assert (hit.text, hit.source, hit.position) == (chunk.text, chunk.source, chunk.position)
    # the score is the cosine similarity of the question and the chunk
    expected = float(embedder.embed_query(question) @ embedder.embed([chunk.text])[0])
    assert hit.score == pytest.approx(expected, abs=1e-3)


def test_source_filter_returns_only_that_file(retriever, chunks):
    own = [c for c in chunks if c.source == "volcanoes.md"]
    assert len(own) > 1  # the test means something only if the file has several chunks
    hits = retriever.retrieve(QUESTIONS["chess.md"], k=10, filters={"source": "volcanoes.md"})
    assert {h.source for h in hits} == {"volcanoes.md"}
    assert len(hits) == len(own)


def test_list_filter_matches_any_of_the_values(retriever):
    wanted = ["baking.md", "gardening.md"]
    hits = retriever.retrieve(QUESTIONS["volcanoes.md"], k=20, filters={"source": wanted})
    assert {h.source for h in hits} == set(wanted)
    hits = retriever.retrieve(QUESTIONS["baking.md"], k=3, filters={"source": wanted, "kind": "markdown"})
    assert hits and hits[0].source == "baking.md"
    assert retriever.retrieve(QUESTIONS["baking.md"], k=3, filters={"kind": "pdf"}) == []


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"author": "me"}, r"filters\.author: unknown filter"),
        ({"source": []}, r"filters\.source: a list must hold one or more strings"),
        ({"source": ["a.md", 3]}, r"filters\.source: a list must hold"),
        ({"position": 1}, r"filters\.position: unknown filter"),
        ({"kind": 1}, r"filters\.kind: expected a string"),
        # 32,766 values and more were one SQL variable each: over SQLite's limit, a 500
        ({"source": ["x.md"] * 40_000}, r"filters\.source: at most 1000 values, got 40000"),
        ({"kind": "k" * 1025}, r"filters\.kind: a value longer than 1024 characters"),
    ],
)
def test_bad_filters_name_the_key(retriever, filters, message):
    with pytest.raises(RetrievalError, match=message):
        retriever.retrieve("What is a volcano?", k=2, filters=filters)


def test_bad_requests_name_the_field(retriever):
    for k in (0, MAX_K + 1):
        with pytest.raises(RetrievalError, match=rf"k: must be between 1 and {MAX_K}, got {k}"):
            retriever.retrieve("What is a volcano?", k=k)
    for question in ("", "   \n"):
        with pytest.raises(RetrievalError, match="question: must not be empty"):
            retriever.retrieve(question)
    with pytest.raises(RetrievalError, match="question: must not be empty"):
        retriever.retrieve_many(["What is a volcano?", ""])


def test_retrieve_many_answers_each_question(retriever):
    sources = sorted(QUESTIONS)
    results = retriever.retrieve_many([QUESTIONS[s] for s in sources], k=3)
    assert len(results) == len(sources)
    for source, hits in zip(sources, results, strict=True):
        assert len(hits) == 3 and hits[0].source == source
    # a question asked alone gets the same hits as in the batch
    alone = retriever.retrieve(QUESTIONS[sources[2]], k=3)
    assert [h.id for h in results[2]] == [h.id for h in alone]
    assert [h.score for h in results[2]] == pytest.approx([h.score for h in alone], abs=1e-4)


def test_langchain_retriever(retriever, store):
    from langchain_core.documents import Document

    documents = retriever.as_langchain(k=2).invoke(QUESTIONS["gardening.md"])
    assert len(documents) == 2 and all(isinstance(d, Document) for d in documents)
    hits = retriever.retrieve(QUESTIONS["gardening.md"], k=2)
    for document, hit in zip(documents, hits, strict=True):
        assert document.page_content == hit.text and document.id == hit.id
        assert document.metadata == {
            "source": hit.source,
            "position": hit.position,
            "score": hit.score,
            "index_version": store[1].version,
        }
    filtered = retriever.as_langchain(k=5, filters={"source": "chess.md"}).invoke("pawns")
    assert filtered and {d.metadata["source"] for d in filtered} == {"chess.md"}


def test_no_questions_no_hits(retriever):
    assert retriever.retrieve_many([], k=3) == []


def test_terms_drop_stopwords_and_meet_plurals_and_tenses():
    from llmops.rag.lexical import terms

    assert terms("Which tools does the project use?") == terms("which TOOL project uses")
    assert terms("The model was promoted") == terms("model promote")
    assert terms("the of and") == []


def test_rrf_fuse_by_hand():
    from llmops.rag.retriever import rrf_fuse

    # a: 1/(1+1) + 1/(1+2) = 0.83; b: 1/(1+2) + 1/(1+1) = 0.83 (tie: first seen wins); c: 1/(1+3)
    assert rrf_fuse([["a", "b", "c"], ["x", "a", "b"]], [1.0, 1.0], rrf_k=1)[:3] == ["a", "b", "x"]
    assert rrf_fuse([["a", "b"], ["b", "a"]], [1.0, 3.0], rrf_k=1) == ["b", "a"]  # weight decides
    assert rrf_fuse([["a"], []], [1.0, 1.0]) == ["a"]


def test_the_default_fusion_depth_keeps_a_chunk_one_ranking_puts_first():
    from llmops.rag.retriever import DEFAULT_CANDIDATES, RetrievalSettings, rrf_fuse

    settings = RetrievalSettings()
    assert (settings.candidates, settings.dense_weight, settings.bm25_weight) == (
        DEFAULT_CANDIDATES,
        1.0,
        2.0,
    )
    both = [f"m{i}" for i in range(10)]  # ranked 4th to 13th by each
    dense = ["d1", "d2", "d3", *both, *(f"x{i}" for i in range(11)), "top"]  # "top" 25th by dense
    bm25 = ["top", "b1", "b2", *both]  # and first by BM25

    def fused(depth):
        weights = [settings.dense_weight, settings.bm25_weight]
        return rrf_fuse([dense[:depth], bm25[:depth]], weights, settings.rrf_k)

    assert fused(settings.candidates).index("top") == 4  # in the top 5
    assert fused(20).index("top") == 10  # cut from the dense list: behind every chunk both ranked


def test_bm25_reads_the_heading_path_of_an_index_built_with_one():
    from llmops.rag.lexical import Bm25Index

    texts = ["Run pip to get it.", "Call it from a shell."]
    with_path = Bm25Index(["a", "b"], texts, [{"heading": "quux > Installation"}, {"heading": ""}])
    assert [position for position, _ in with_path.search("install quux", 2)] == [0]
    assert Bm25Index(["a", "b"], texts, [{}, {}]).search("install quux", 2) == []


@pytest.mark.parametrize("mode", ["bm25", "hybrid"])
def test_lexical_modes_rank_the_right_document_first(store, embedder, mode):
    from llmops.rag.retriever import RetrievalSettings

    retriever = Retriever(store[2], embedder, RetrievalSettings(mode=mode))
    dense = Retriever(store[2], embedder)
    for source, question in QUESTIONS.items():
        hits = retriever.retrieve(question, k=3)
        assert hits[0].source == source, (mode, question)
        # the score is the chunk's cosine similarity in every mode
        same = {h.id: h.score for h in dense.retrieve(question, k=MAX_K)}
        assert all(h.score == pytest.approx(same[h.id], abs=1e-4) for h in hits if h.id in same)
    # a rare exact word ("Pyroclastic") is found by its letters, whatever its embedding
    assert retriever.retrieve("pyroclastic", k=1)[0].source == "volcanoes.md"
    only = retriever.retrieve("lava and starter and chess", k=5, filters={"source": "chess.md"})
    assert only and {h.source for h in only} == {"chess.md"}


def test_bad_retrieval_settings_name_the_field():
    from pydantic import ValidationError

    from llmops.rag.retriever import RetrievalSettings

    with pytest.raises(ValidationError, match="mode"):
        RetrievalSettings(mode="sparse")
    with pytest.raises(ValidationError, match="dense_weight, bm25_weight"):
        RetrievalSettings(dense_weight=0, bm25_weight=0)
    assert RetrievalSettings().tokenizer and not RetrievalSettings(mode="dense").tokenizer
