"""RAG index speed: llmops.rag against LangChain and raw Chroma / sentence-transformers, same run.

    python bench/rag_index.py                         # ~300 files: docs/ + installed packages' docs
    python bench/rag_index.py --files 100 --retrieval-chunks 20000
    python bench/rag_index.py --quick                 # one file, 300 retrieval chunks: a smoke run

Four measurements, each against a baseline timed in the same run on the same input:

1. index throughput (chunks/s): llmops (load → split → embed → write a Chroma index, embedding in
   the index build's precision, ``LLMOPS_EMBED_PRECISION``) against LangChain's
   ``langchain_chroma.Chroma.from_documents`` with ``langchain_huggingface.HuggingFaceEmbeddings``
   on the same chunks and the same model (target >= 1.5x); the two are timed in turns, ``--rounds``
   times each, and each side's best round is compared (the machine is shared);
2. embedding rate: ``Embedder.embed`` against ``SentenceTransformer.encode`` (target >= 90%);
3. re-index after 1% of the files changed, against a full rebuild (target >= 20x);
4. retrieval p50 over an index of --retrieval-chunks chunks (random unit vectors: latency does not
   depend on what they mean) against embedding the question and calling ``collection.query`` by
   hand (target <= 1.3x).

The corpus is the project's docs/ plus Markdown, reStructuredText and text files of the installed
packages (READMEs, licences, docs), copied to a temporary folder: real prose of mixed length.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=300, help="Files in the corpus.")
    parser.add_argument(
        "--retrieval-chunks", type=int, default=100_000, help="Chunks in the retrieval index."
    )
    parser.add_argument("--queries", type=int, default=200, help="Queries timed for the p50.")
    parser.add_argument("--rounds", type=int, default=2, help="Index builds timed per side, in turns.")
    parser.add_argument(
        "--quick", action="store_true", help="One file, 300 retrieval chunks, 5 queries: checks it runs."
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.files, args.retrieval_chunks, args.queries, args.rounds = 1, 300, 5, 1
    return args


def gather_corpus(target: Path, limit: int) -> int:
    """Copy docs/ and the packages' own text files (1-200 KB) into ``target``; returns the count."""
    target.mkdir(parents=True)
    site = Path(np.__file__).resolve().parents[1]
    candidates = sorted(REPO.glob("docs/*.md")) + sorted(
        p
        for p in site.rglob("*")
        if p.suffix.lower() in (".md", ".rst", ".txt")
        and p.is_file()
        and 1_000 <= p.stat().st_size <= 200_000
        and "test" not in p.as_posix().lower()
    )
    copied = 0
    for source in candidates:
        try:
            source.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        shutil.copy(source, target / f"{copied:04d}-{source.name}".replace(".rst", ".txt"))
        copied += 1
        if copied == limit:
            break
    return copied


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def build_llmops(corpus: Path, store: Path, embedder, previous: bool):
    """The index flow's work without the Metaflow orchestration: what a build costs."""
    from llmops.rag.chunking import Chunk, ChunkingConfig, split_documents
    from llmops.rag.documents import load_corpus
    from llmops.rag.index import (
        IndexInfo,
        assemble_vectors,
        chroma_client,
        index_version,
        indexed_hashes,
        plan_embedding,
        previous_index,
        reusable_embeddings,
        write_index,
    )  # fmt: skip

    chunking = ChunkingConfig()
    docs = load_corpus(corpus)
    chunks: list[Chunk] = split_documents(docs.documents, chunking)
    client = chroma_client(str(store))
    before = previous_index(client, chunking, embedder.model_id) if previous else None
    hashes = [c.content_hash for c in chunks]
    known = indexed_hashes(before) & set(hashes)
    missing = plan_embedding(hashes, known)
    embedded = embedder.embed([chunks[i].index_text for i in missing])
    vectors = assemble_vectors(
        [c.content_hash for c in chunks], [(missing, embedded)], reusable_embeddings(before, known)
    )
    info = IndexInfo(
        version=index_version(docs.version, chunking, embedder.model_id),
        corpus_version=docs.version,
        chunking=chunking,
        embedding_model=embedder.name,
        embedding_model_id=embedder.model_id,
        chunks=len(chunks),
    )
    write_index(client, info, chunks, vectors)
    return chunks, len(missing)


def main(argv=None) -> int:
    args = parse_args(argv)
    from llmops.rag.embeddings import Embedder, EmbeddingSettings
    from llmops.settings import settings_from_env

    work = Path(tempfile.mkdtemp(prefix="rag-bench-"))
    try:
        corpus = work / "corpus"
        n_files = gather_corpus(corpus, args.files)
        embedder = Embedder()  # questions, and the float32 reference
        indexer = Embedder(precision=settings_from_env(EmbeddingSettings).embed_precision)
        embedder.embed(["warm up"])
        indexer.embed(["warm up"])
        print(f"corpus: {n_files} files in {corpus}; index build precision {indexer.compute_dtype}")

        # 1. index throughput, llmops and LangChain in turns
        ours_times, lc_times = [], []
        for round_ in range(args.rounds):
            (chunks, _), seconds = timed(
                lambda r=round_: build_llmops(corpus, work / f"ours-{r}", indexer, previous=False)
            )
            ours_times.append(seconds)
            lc_times.append(time_langchain(chunks, work / f"langchain-{round_}", embedder.path))
            print(
                f"   round {round_ + 1}: llmops {seconds:.1f} s, LangChain {lc_times[-1]:.1f} s", flush=True
            )
        ours_s, lc_s = min(ours_times), min(lc_times)
        chars = sum(len(c.text) for c in chunks)
        print(f"\n1. index {len(chunks)} chunks ({chars / 1e6:.1f} M characters), best of {args.rounds}")
        report("llmops index", len(chunks) / ours_s, "LangChain Chroma.from_documents", len(chunks) / lc_s,
               "chunks/s", 1.5)  # fmt: skip
        sample = [c.index_text for c in chunks[:: max(1, len(chunks) // 200)]]
        cosine = (embedder.embed(sample) * indexer.embed(sample)).sum(axis=1)
        print(f"   index vectors vs float32: cosine min {cosine.min():.5f} over {len(sample)} chunks")

        # 2. embedding rate
        texts = [c.text for c in chunks]
        _, ours_embed_s = timed(lambda: embedder.embed(texts))
        raw_s = time_raw_encode(texts, embedder.path)
        report("Embedder.embed", len(texts) / ours_embed_s, "SentenceTransformer.encode", len(texts) / raw_s,
               "texts/s", 0.9)  # fmt: skip

        # 3. re-index after 1% of the files changed
        files = sorted(corpus.iterdir())
        for path in files[:: max(1, len(files) // max(1, n_files // 100))][: max(1, n_files // 100)]:
            path.write_text(path.read_text() + "\n\nA paragraph added for the re-index benchmark.\n")
        (_, embedded), incremental_s = timed(
            lambda: build_llmops(corpus, work / "ours-0", indexer, previous=True)
        )
        print(f"\n3. re-index: {max(1, n_files // 100)} files changed, {embedded} chunks embedded again")
        report("re-index (incremental)", 1 / incremental_s, "full rebuild", 1 / ours_s, "builds/s", 20)

        # 4. retrieval latency at scale
        retrieval(work / "retrieval", embedder, args.retrieval_chunks, args.queries, texts)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def time_langchain(chunks, store: Path, model_path: Path) -> float:
    from langchain_chroma import Chroma
    from langchain_core.documents import Document
    from langchain_huggingface import HuggingFaceEmbeddings

    embeddings = HuggingFaceEmbeddings(model_name=str(model_path))
    embeddings.embed_query("warm up")
    documents = [Document(page_content=c.text, metadata=c.metadata()) for c in chunks]
    _, seconds = timed(
        lambda: Chroma.from_documents(
            documents, embeddings, persist_directory=str(store), collection_name="bench"
        )
    )
    return seconds


def time_raw_encode(texts, model_path: Path) -> float:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path), device="cpu")
    model.encode(["warm up"])
    _, seconds = timed(lambda: model.encode(texts, batch_size=32, normalize_embeddings=True))
    return seconds


def retrieval(store: Path, embedder, n: int, queries: int, texts) -> None:
    from llmops.rag.chunking import Chunk, ChunkingConfig
    from llmops.rag.index import IndexInfo, chroma_client, write_index
    from llmops.rag.retriever import Retriever

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, embedder.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    chunks = [
        Chunk(id=f"c{i}", text=texts[i % len(texts)], source=f"f{i % 1000}.md", position=i, start=0,
              doc_hash="d", content_hash=f"h{i}", kind="markdown")
        for i in range(n)
    ]  # fmt: skip
    info = IndexInfo(
        version="idx-bench00000000",
        corpus_version="corpus-bench",
        chunking=ChunkingConfig(),
        embedding_model=embedder.name,
        embedding_model_id=embedder.model_id,
        chunks=n,
    )
    client = chroma_client(str(store))
    _, build_s = timed(lambda: write_index(client, info, chunks, vectors))
    collection = client.get_collection(info.version)
    retriever = Retriever(collection, embedder)
    questions = [f"question {i}: " + texts[i % len(texts)][:80] for i in range(queries)]
    from sentence_transformers import SentenceTransformer

    raw_model = SentenceTransformer(str(embedder.path), device="cpu")  # the baseline embeds by hand
    ours, raw = [], []
    for question in questions:  # interleaved, so both see the same machine state
        _, seconds = timed(lambda q=question: retriever.retrieve(q, 4))
        ours.append(seconds)
        _, seconds = timed(
            lambda q=question: collection.query(
                query_embeddings=raw_model.encode([q], normalize_embeddings=True),
                n_results=4,
                include=["documents", "metadatas", "distances"],
            )
        )
        raw.append(seconds)
    print(f"\n4. retrieval over {n} chunks (index written in {build_s:.0f} s), {queries} queries, k=4")
    ours_p50, raw_p50 = statistics.median(ours) * 1000, statistics.median(raw) * 1000
    print(f"   llmops Retriever.retrieve p50 {ours_p50:.1f} ms")
    print(f"   raw encode + collection.query p50 {raw_p50:.1f} ms")
    print(f"   ratio {ours_p50 / raw_p50:.2f}x (target <= 1.3x)")


def report(ours_name, ours_rate, base_name, base_rate, unit, target) -> None:
    print(f"   {ours_name}: {ours_rate:,.2f} {unit}   {base_name}: {base_rate:,.2f} {unit}")
    print(f"   ratio {ours_rate / base_rate:.2f}x (target >= {target}x)")


if __name__ == "__main__":
    sys.exit(main())
