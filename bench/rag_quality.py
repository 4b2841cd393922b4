"""RAG answer quality: llmops retrieval (dense, BM25, hybrid) against LangChain's default pipeline
and plain BM25, on golden sets, side by side in one run.

    python bench/rag_quality.py                                   # docs/ and the README corpus
    python bench/rag_quality.py --docs /tmp/essays --golden /tmp/essays/golden.yaml

With no --docs, two corpora: the project's docs/ with evals/rag_golden.yaml, and the README test
corpus tests/data/readmes/ (25 package READMEs, SOURCES.md left out) with
tests/data/readmes_golden.yaml, which no retrieval default was tuned on.

Systems:
- llmops dense / bm25 / hybrid: the project's index (its default chunking, all-MiniLM-L6-v2,
  Chroma) ranked by each retrieval mode (hybrid: reciprocal-rank fusion of dense and BM25);
- langchain: RecursiveCharacterTextSplitter(1000, 200), langchain_huggingface's
  HuggingFaceEmbeddings with the same model, langchain_chroma's Chroma.from_documents,
  similarity_search (LangChain's defaults);
- bm25 baseline: bm25s with its own tokenizer (English stopwords) over the same 1000/200 chunks.

A retrieved chunk is a hit when it contains a reference context of the golden question (the
gate's own relevance rule, llmops.rag.evaluation.is_relevant). For each system: hit@1/3/5,
MRR@5, and the share of answers holding the reference's key facts, where the answer is the
extractive generator's on that system's top 4 chunks (answer_key_score: the golden ``keys``, or
a quoted reference context). Also, for hybrid: the share of questions whose answer holds the key
among those whose key is in the retrieved context (target >= 0.80).

Targets: hybrid >= the best baseline (LangChain or plain BM25, by hit@1 then hit@5) on hit@1,
hit@5 and answer key, over all questions of the corpora. The final line reads ``rag quality:
hybrid hit@1 X.XX hit@5 X.XX answer X.XX vs best baseline hit@1 X.XX hit@5 X.XX answer X.XX``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
K = 5
ANSWER_K = 4
SYSTEMS = ("llmops dense", "llmops bm25", "llmops hybrid", "langchain", "bm25 baseline")
BASELINES = ("langchain", "bm25 baseline")
# (corpus folder, golden set, files of the folder that are not part of the corpus)
CORPORA = (
    (REPO / "docs", REPO / "evals/rag_golden.yaml", ()),
    (REPO / "tests/data/readmes", REPO / "tests/data/readmes_golden.yaml", ("SOURCES.md",)),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", help="Corpus folder (default: docs/ and the README corpus).")
    parser.add_argument("--golden", help="Golden set YAML of --docs.")
    parser.add_argument("--show-misses", action="store_true", help="Print the questions hybrid misses.")
    args = parser.parse_args(argv)
    if bool(args.docs) != bool(args.golden):
        parser.error("--docs and --golden go together")
    return args


def load(docs: Path, exclude: tuple[str, ...]):
    from llmops.rag.documents import load_corpus

    corpus = load_corpus(docs)
    return corpus.model_copy(update={"documents": [d for d in corpus.documents if d.path not in exclude]})


def llmops_rankings(corpus, questions: list[str], store: Path, embedder):
    """Top-K chunk texts per question for each llmops retrieval mode."""
    from llmops.rag.chunking import ChunkingConfig, split_documents
    from llmops.rag.index import IndexInfo, chroma_client, index_version, write_index
    from llmops.rag.retriever import RetrievalSettings, Retriever

    chunking = ChunkingConfig()
    chunks = split_documents(corpus.documents, chunking)
    version = index_version(corpus.version, chunking, embedder.model_id)
    info = IndexInfo(
        version=version,
        corpus_version=corpus.version,
        chunking=chunking,
        embedding_model=embedder.name,
        embedding_model_id=embedder.model_id,
        chunks=len(chunks),
    )
    from llmops.rag.embeddings import Embedder, EmbeddingSettings
    from llmops.settings import settings_from_env

    # documents are embedded as an index build embeds them (LLMOPS_EMBED_PRECISION), questions in float32
    precision = settings_from_env(EmbeddingSettings).embed_precision
    vectors = Embedder(embedder.name, precision=precision).embed([c.index_text for c in chunks])
    collection = write_index(chroma_client(str(store)), info, chunks, vectors)
    found = {}
    for mode in ("dense", "bm25", "hybrid"):
        retriever = Retriever(collection, embedder, RetrievalSettings(mode=mode))
        found[f"llmops {mode}"] = [[h.text for h in hits] for hits in retriever.retrieve_many(questions, K)]
    return found


def baseline_rankings(corpus, questions: list[str], model_path: str, store: Path):
    """Top-K chunk texts per question for LangChain's default pipeline and for plain BM25."""
    import bm25s
    from langchain_chroma import Chroma
    from langchain_core.documents import Document
    from langchain_huggingface import HuggingFaceEmbeddings
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)
    pieces = splitter.split_documents(
        [Document(page_content=d.text, metadata={"source": d.path}) for d in corpus.documents]
    )
    vectors = Chroma.from_documents(
        pieces, HuggingFaceEmbeddings(model_name=model_path), persist_directory=str(store)
    )
    found = {"langchain": [[d.page_content for d in vectors.similarity_search(q, k=K)] for q in questions]}
    texts = [p.page_content for p in pieces]
    bm25 = bm25s.BM25()
    bm25.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    ids, _ = bm25.retrieve(
        bm25s.tokenize(questions, stopwords="en", show_progress=False),
        k=min(K, len(texts)),
        show_progress=False,
    )
    found["bm25 baseline"] = [[texts[i] for i in row] for row in ids]
    return found


def per_question(ranked: list[list[str]], golden, generator) -> list[dict[str, float]]:
    """Per question: first relevant rank (0 when none), answer key, key in the answered context."""
    from llmops.rag.evaluation import answer_key_score, is_relevant
    from llmops.rag.generators import GenerationRequest

    rows = []
    for chunks, item in zip(ranked, golden.questions, strict=True):
        ranks = [r for r, c in enumerate(chunks, 1) if is_relevant(c, item.reference_contexts)]
        contexts = chunks[:ANSWER_K]
        answer = generator.generate(GenerationRequest(messages=[], question=item.question, contexts=contexts))
        rows.append(
            {
                "rank": ranks[0] if ranks else 0,
                "answer_key": answer_key_score(answer, item),
                "in_context": float(answer_key_score("\n".join(contexts), item) == 1.0),
            }
        )
    return rows


def summary(rows: list[dict[str, float]]) -> dict[str, float]:
    n = max(1, len(rows))
    hits = {f"hit@{k}": sum(0 < r["rank"] <= k for r in rows) / n for k in (1, 3, 5)}
    mrr = sum(1 / r["rank"] for r in rows if r["rank"]) / n
    return hits | {"mrr@5": mrr, "answer_key": sum(r["answer_key"] for r in rows) / n}


def print_table(title: str, results: dict[str, list[dict[str, float]]]) -> None:
    print(f"\n{title}")
    print(f"{'system':<16} {'hit@1':>6} {'hit@3':>6} {'hit@5':>6} {'mrr@5':>6} {'answer key':>11}")
    for name in SYSTEMS:
        s = summary(results[name])
        print(
            f"{name:<16} {s['hit@1']:6.2f} {s['hit@3']:6.2f} {s['hit@5']:6.2f} {s['mrr@5']:6.2f} "
            f"{s['answer_key']:11.2f}"
        )


def run_corpus(docs: Path, golden_path: Path, exclude: tuple[str, ...], embedder, generator, tmp: Path, show):
    from llmops.rag.evaluation import load_golden

    golden = load_golden(golden_path, "--golden")
    questions = [item.question for item in golden.questions]
    corpus = load(docs, exclude)
    print(
        f"{docs}: {len(corpus.documents)} files, {len(questions)} questions ({golden_path.name})", flush=True
    )
    ranked = llmops_rankings(corpus, questions, tmp / "llmops", embedder)
    ranked |= baseline_rankings(corpus, questions, str(embedder.path), tmp / "lc")
    results = {name: per_question(ranked[name], golden, generator) for name in SYSTEMS}
    print_table(f"{docs.name}/ ({len(questions)} questions)", results)
    if show:
        for item, row in zip(golden.questions, results["llmops hybrid"], strict=True):
            if row["rank"] == 0 or row["answer_key"] < 1.0:
                print(f"- rank {row['rank']} key {row['answer_key']:.2f}: {item.question}")
    return results


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from llmops.rag.embeddings import Embedder
    from llmops.rag.generators import ExtractiveGenerator

    corpora = [(Path(args.docs), Path(args.golden), ())] if args.docs else list(CORPORA)
    embedder = Embedder("all-MiniLM-L6-v2")
    generator = ExtractiveGenerator(embedder)
    pooled: dict[str, list[dict[str, float]]] = {name: [] for name in SYSTEMS}
    with tempfile.TemporaryDirectory(prefix="llmops-rag-quality-") as tmp:
        for n, (docs, golden, exclude) in enumerate(corpora):
            results = run_corpus(
                docs, golden, exclude, embedder, generator, Path(tmp) / str(n), args.show_misses
            )
            for name in SYSTEMS:
                pooled[name] += results[name]
    if len(corpora) > 1:
        print_table(f"all corpora ({len(pooled['llmops hybrid'])} questions)", pooled)
    hybrid = pooled["llmops hybrid"]
    answerable = [r for r in hybrid if r["in_context"]]
    held = sum(r["answer_key"] == 1.0 for r in answerable)
    share = held / len(answerable) if answerable else 0.0
    print(
        f"\nhybrid: the answer holds the key for {held} of {len(answerable)} questions whose key is in "
        f"the top {ANSWER_K} ({share:.2f}; target >= 0.80)"
    )
    h = summary(hybrid)
    alone = max(summary(pooled["llmops dense"])["hit@1"], summary(pooled["llmops bm25"])["hit@1"])
    best = max(BASELINES, key=lambda name: (summary(pooled[name])["hit@1"], summary(pooled[name])["hit@5"]))
    b = summary(pooled[best])
    print(
        f"hybrid hit@1 {h['hit@1']:.2f} vs the better of dense and BM25 alone {alone:.2f}; "
        f"best baseline: {best}"
    )
    print(
        f"rag quality: hybrid hit@1 {h['hit@1']:.2f} hit@5 {h['hit@5']:.2f} answer {h['answer_key']:.2f} "
        f"vs best baseline hit@1 {b['hit@1']:.2f} hit@5 {b['hit@5']:.2f} answer {b['answer_key']:.2f}"
    )


if __name__ == "__main__":
    main()
