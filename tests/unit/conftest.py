"""Fixtures of the RAG unit tests: the real offline embedding model, the corpus of rag_corpus.py,
its chunks and vectors, a real Chroma store holding its index, and a retriever and an extractive
pipeline over it. Module-scoped: built once by each test module that reads them (with
``--dist loadscope`` a module runs on one worker), never changed by a test."""

import pytest

from llmops.prompts import load_prompt
from llmops.rag.chunking import split_documents
from llmops.rag.documents import load_corpus
from llmops.rag.embeddings import Embedder
from llmops.rag.generators import make_generator
from llmops.rag.index import chroma_client, write_index
from llmops.rag.pipeline import RagPipeline
from llmops.rag.retriever import Retriever
from tests.unit.rag_corpus import CHUNKING, DOCS, make_info


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


@pytest.fixture(scope="module")
def corpus_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for name, text in DOCS.items():
        (root / name).write_text(text)
    return root


@pytest.fixture(scope="module")
def corpus(corpus_folder):
    return load_corpus(corpus_folder)


@pytest.fixture(scope="module")
def chunks(corpus):
    return split_documents(corpus.documents, CHUNKING)


@pytest.fixture(scope="module")
def vectors(embedder, chunks):
    return embedder.embed([c.text for c in chunks])


@pytest.fixture(scope="module")
def store(tmp_path_factory, corpus, chunks, vectors, embedder):
    """A Chroma folder holding one finished index of the corpus; (client, info, collection)."""
    client = chroma_client(str(tmp_path_factory.mktemp("chroma")))
    info = make_info(corpus, chunks, embedder)
    collection = write_index(client, info, chunks, vectors)
    return client, info, collection


@pytest.fixture(scope="module")
def retriever(store, embedder):
    return Retriever(store[2], embedder)


@pytest.fixture(scope="module")
def pipeline(retriever, embedder):
    return RagPipeline(retriever, load_prompt("rag_answer"), make_generator("extractive", embedder))
