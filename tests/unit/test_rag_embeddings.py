"""The embedder's own contract on the real offline model: normalized float32 vectors whose dot
product is the cosine, a stable model id, the model's own token counts, unusable options named, and
its LangChain face (test_embeddings.py holds it against sentence-transformers itself)."""

import re

import numpy as np
import pytest

from llmops.rag.embeddings import DEFAULT_MODEL, Embedder, EmbeddingError, resolve_model_path

DIMENSION = 384


def test_embeddings_are_normalized_float32(embedder):
    texts = ["The volcano erupted.", "Bake bread in a hot oven.", "Castle early in chess."]
    vectors = embedder.embed(texts)
    assert vectors.shape == (len(texts), DIMENSION) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.dimension == DIMENSION
    empty = embedder.embed([])
    assert empty.shape == (0, DIMENSION) and empty.dtype == np.float32
    # the dot product is the cosine similarity: a paraphrase is closer than another topic
    query = embedder.embed_query("When does a volcano erupt?")
    assert query @ vectors[0] > query @ vectors[1] and query @ vectors[0] > query @ vectors[2]


def test_batch_size_does_not_change_the_vectors(embedder):
    texts = [f"Sentence number {i} about tomatoes and sunlight." for i in range(5)]
    whole = embedder.embed(texts)
    saved, embedder.batch_size = embedder.batch_size, 2
    try:
        np.testing.assert_allclose(embedder.embed(texts), whole, atol=1e-5)
    finally:
        embedder.batch_size = saved


def test_model_id_is_stable_and_names_the_model(embedder):
    again = Embedder(f"sentence-transformers/{DEFAULT_MODEL}")
    assert again.model_id == embedder.model_id
    assert embedder.model_id.startswith(f"{DEFAULT_MODEL}@")
    assert re.fullmatch(r"[0-9a-f]{12}", embedder.model_id.split("@", 1)[1])


def test_token_counts_from_the_tokenizer_file_are_the_models_own(embedder, chunks):
    long = " ".join(f"word{i}" for i in range(400))
    texts = [c.text for c in chunks] + ["", "Ünïcode, emoji 🙂 and CamelCaseWords_with_underscores", long]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(embedder.path), local_files_only=True)  # the model's own
    by_model = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    assert embedder.count_tokens(texts) == by_model
    assert max(by_model) > embedder.max_tokens  # counted before truncation


def test_unusable_model_settings_name_the_option(tmp_path):
    with pytest.raises(EmbeddingError, match=r"--embedding-model: .*no-such-model"):
        resolve_model_path(str(tmp_path / "no-such-model"))
    with pytest.raises(EmbeddingError, match="--embedding-model"):
        Embedder(str(tmp_path))  # a folder, but not a model (no config.json)
    with pytest.raises(EmbeddingError, match="--batch-size"):
        Embedder(batch_size=0)
    assert (resolve_model_path(DEFAULT_MODEL) / "config.json").is_file()


def test_langchain_embeddings_match(embedder):
    langchain = embedder.as_langchain()
    text = "How do I oil a bicycle chain?"
    np.testing.assert_allclose(langchain.embed_query(text), embedder.embed_query(text), atol=1e-6)
    documents = langchain.embed_documents(["one text", "another text"])
    np.testing.assert_allclose(documents, embedder.embed(["one text", "another text"]), atol=1e-6)
