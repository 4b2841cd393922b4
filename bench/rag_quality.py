"""RAG answer quality: llmops retrieval (dense, BM25, hybrid) against LangChain's default pipeline
and plain BM25, on one golden set, side by side in one run.

    python bench/rag_quality.py                                   # docs/ + evals/rag_golden.yaml
    python bench/rag_quality.py --docs /tmp/essays --golden /tmp/essays/golden.yaml

Systems:
- llmops dense / bm25 / hybrid: the project's index (800/120 chunks, all-MiniLM-L6-v2, Chroma)
  ranked by each retrieval mode (hybrid: reciprocal-rank fusion of dense and BM25);
- langchain: RecursiveCharacterTextSplitter(1000, 200), HuggingFaceEmbeddings with the same
  model, Chroma.from_documents, similarity_search (LangChain's defaults);
- bm25 baseline: bm25s with its own tokenizer (English stopwords) over the same 1000/200 chunks.

A retrieved chunk is a hit when it contains a reference context of the golden question (the
gate's own relevance rule, llmops.rag.evaluation.is_relevant). For each system: hit@1/3/5,
MRR@5, and the share of answers holding the reference's key facts, where the answer is the
extractive generator's on that system's top 4 chunks (answer_key_score: the golden ``keys``, or
a quoted reference context). Also, for hybrid: the share of questions whose answer holds the key
among those whose key is in the retrieved context (target >= 0.80).

Targets: hybrid hit@1 >= the better of llmops dense and bm25; hybrid hit@5 >= both baselines.
The final line reads ``rag quality: hybrid hit@1 X.XX hit@5 X.XX vs best baseline hit@1 X.XX
hit@5 X.XX``.
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", default=str(REPO / "docs"), help="Corpus folder.")
    parser.add_argument("--golden", default=str(REPO / "evals/rag_golden.yaml"), help="Golden set YAML.")
    parser.add_argument("--show-misses", action="store_true", help="Print the questions hybrid misses.")
    return parser.parse_args(argv)


def llmops_rankings(docs: str, questions: list[str], store: Path):
    """Top-K chunk texts per question for each llmops retrieval mode, and the embedder."""
    from llmops.rag.chunking import ChunkingConfig, split_documents
    from llmops.rag.documents import load_corpus
    from llmops.rag.embeddings import Embedder
    from llmops.rag.index import IndexInfo, chroma_client, index_version, write_index
    from llmops.rag.retriever import RetrievalSettings, Retriever

    corpus = load_corpus(docs)
    chunking = ChunkingConfig()
    embedder = Embedder("all-MiniLM-L6-v2")
    chunks = split_documents(corpus.documents, chunking)
    version = index_version(corpus.version, chunking, embedder.model_id)
    info = IndexInfo(
        version=version,
        corpus_version=corpus.version,
        chunking=chunking,
        embedding_model="all-MiniLM-L6-v2",
        embedding_model_id=embedder.model_id,
        chunks=len(chunks),
    )
    collection = write_index(
        chroma_client(str(store)), info, chunks, embedder.embed([c.text for c in chunks])
    )
    found = {}
    for mode in ("dense", "bm25", "hybrid"):
        retriever = Retriever(collection, embedder, RetrievalSettings(mode=mode))
        found[f"llmops {mode}"] = [[h.text for h in hits] for hits in retriever.retrieve_many(questions, K)]
    return found, embedder, corpus


def baseline_rankings(corpus, questions: list[str], model_path: str, store: Path):
    """Top-K chunk texts per question for LangChain's default pipeline and for plain BM25."""
    import bm25s
    from langchain_community.embeddings import HuggingFaceEmbeddings
    from langchain_community.vectorstores import Chroma
    from langchain_core.documents import Document
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
        bm25s.tokenize(questions, stopwords="en", show_progress=False), k=K, show_progress=False
    )
    found["bm25 baseline"] = [[texts[i] for i in row] for row in ids]
    return found


def scores(ranked: list[list[str]], golden, embedder) -> tuple[dict[str, float], list[float], list[float]]:
    """hit@1/3/5, MRR@5 and answer-key share; per question: answer key, key in context."""
    from llmops.rag.evaluation import answer_key_score, is_relevant
    from llmops.rag.generators import ExtractiveGenerator, GenerationRequest

    generator = ExtractiveGenerator(embedder)
    hits = {1: 0, 3: 0, 5: 0}
    mrr, keys, in_context = 0.0, [], []
    for chunks, item in zip(ranked, golden.questions, strict=True):
        ranks = [r for r, c in enumerate(chunks, 1) if is_relevant(c, item.reference_contexts)]
        for n in hits:
            hits[n] += bool(ranks) and ranks[0] <= n
        mrr += 1 / ranks[0] if ranks else 0.0
        contexts = chunks[:ANSWER_K]
        answer = generator.generate(GenerationRequest(messages=[], question=item.question, contexts=contexts))
        keys.append(answer_key_score(answer, item))
        in_context.append(answer_key_score("\n".join(contexts), item) == 1.0)
    n = len(golden.questions)
    summary = {f"hit@{k}": v / n for k, v in hits.items()} | {"mrr@5": mrr / n, "answer_key": sum(keys) / n}
    return summary, keys, in_context


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from llmops.rag.embeddings import resolve_model_path
    from llmops.rag.evaluation import load_golden

    golden = load_golden(args.golden, "--golden")
    questions = [item.question for item in golden.questions]
    with tempfile.TemporaryDirectory(prefix="llmops-rag-quality-") as tmp:
        ours, embedder, corpus = llmops_rankings(args.docs, questions, Path(tmp) / "llmops")
        theirs = baseline_rankings(
            corpus, questions, str(resolve_model_path("all-MiniLM-L6-v2")), Path(tmp) / "lc"
        )
        results = {}
        print(f"{len(questions)} questions, {len(corpus.documents)} files\n")
        print(f"{'system':<16} {'hit@1':>6} {'hit@3':>6} {'hit@5':>6} {'mrr@5':>6} {'answer key':>11}")
        for name, ranked in {**ours, **theirs}.items():
            results[name] = scores(ranked, golden, embedder)
            s = results[name][0]
            print(
                f"{name:<16} {s['hit@1']:6.2f} {s['hit@3']:6.2f} {s['hit@5']:6.2f} {s['mrr@5']:6.2f} "
                f"{s['answer_key']:11.2f}"
            )
    hybrid, keys, in_context = results["llmops hybrid"]
    answerable = [k for k, c in zip(keys, in_context, strict=True) if c]
    share = sum(k == 1.0 for k in answerable) / len(answerable) if answerable else 0.0
    print(
        f"\nhybrid: the answer holds the key for {sum(k == 1.0 for k in answerable)} of {len(answerable)} "
        f"questions whose key is in the top {ANSWER_K} ({share:.2f}; target >= 0.80)"
    )
    if args.show_misses:
        for item, key, ctx in zip(golden.questions, keys, in_context, strict=True):
            if key < 1.0 or not ctx:
                print(f"- key {key:.2f} in-context {ctx}: {item.question}")
    alone = max(results["llmops dense"][0]["hit@1"], results["llmops bm25"][0]["hit@1"])
    best = max(("langchain", "bm25 baseline"), key=lambda n: (results[n][0]["hit@1"], results[n][0]["hit@5"]))
    b = results[best][0]
    print(f"hybrid hit@1 {hybrid['hit@1']:.2f} vs the better of dense and BM25 alone {alone:.2f}")
    print(
        f"rag quality: hybrid hit@1 {hybrid['hit@1']:.2f} hit@5 {hybrid['hit@5']:.2f} "
        f"vs best baseline hit@1 {b['hit@1']:.2f} hit@5 {b['hit@5']:.2f}"
    )


if __name__ == "__main__":
    main()
