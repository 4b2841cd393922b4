"""RAG candidate answering: an LLM candidate answers the golden set in batches
(``RagPipeline.answer_many``, the transformers backend's step-level batching) against one question
at a time (``answer_from``), on the same prompts and contexts.

    python bench/rag_candidates.py            # SmolLM2-135M-Instruct, evals/rag_golden.yaml, hybrid top 4
    python bench/rag_candidates.py --quick    # the tiny local model, 4 questions, their reference contexts

The full mode indexes docs/ (as flows/build_rag_index.py does, all-MiniLM-L6-v2) and retrieves every
question's top 4 chunks once; both paths answer from them with the rag_answer prompt, greedy. It also
counts the questions whose batched answer equals the sequential one (greedy decoding: all, unless two
logits tie to within float32 rounding). Target: batched / sequential >= 4x. The final line reads
``candidate answering: batched / sequential = X.XXx``. Before it, the prompts' shape: tokens each,
the prefix they share (the engine computes its KV once) and the padding a single prefill of the
batch adds (what sorting prompts into length buckets could save).

    python bench/rag_candidates.py --record tests/data/rag_candidate_scores.json --name docs
    python bench/rag_candidates.py --docs tests/data/readmes --golden tests/data/readmes_golden.yaml \
        --record tests/data/rag_candidate_scores.json --name readmes

``--record`` also scores the extractive generator and the batched LLM answers on the golden set
(full evaluations, as flows/evaluate_rag.py scores them) and writes each candidate's means and
per-question ``answer_key``, ``rouge_l`` and ``string_similarity`` under ``--name``: the data
tests/unit/test_rag_candidates.py replays early elimination on.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
K = 4
QUICK_QUESTIONS = 4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="Tiny model and 4 questions (a smoke run).")
    parser.add_argument("--golden", default=str(REPO / "evals/rag_golden.yaml"), help="Golden set YAML.")
    parser.add_argument("--docs", default=str(REPO / "docs"), help="Corpus folder (full mode).")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1).")
    parser.add_argument("--record", default="", help="JSON file to add full-evaluation scores to.")
    parser.add_argument("--name", default="docs", help="The corpus's key in the --record file.")
    args = parser.parse_args(argv)
    if args.quick and args.record:
        parser.error("--record: needs the full mode (an index to score the extractive generator on)")
    return args


def retrieved(docs: str, questions: list[str], store: Path):
    """Every question's top K hybrid hits from an index of ``docs``, and the retriever."""
    from llmops.rag.chunking import ChunkingConfig, split_documents
    from llmops.rag.documents import load_corpus
    from llmops.rag.embeddings import Embedder
    from llmops.rag.index import IndexInfo, chroma_client, index_version, write_index
    from llmops.rag.retriever import Retriever

    corpus, chunking, embedder = load_corpus(docs), ChunkingConfig(), Embedder("all-MiniLM-L6-v2")
    chunks = split_documents(corpus.documents, chunking)
    info = IndexInfo(version=index_version(corpus.version, chunking, embedder.model_id),
                     corpus_version=corpus.version, chunking=chunking, embedding_model="all-MiniLM-L6-v2",
                     embedding_model_id=embedder.model_id, chunks=len(chunks))  # fmt: skip
    collection = write_index(
        chroma_client(str(store)), info, chunks, embedder.embed([c.text for c in chunks])
    )
    retriever = Retriever(collection, embedder)
    return retriever.retrieve_many(questions, K), retriever


def reference_hits(golden):
    """The golden reference contexts as hits: no index to build for a smoke run."""
    from llmops.rag.retriever import Hit

    return [
        [Hit(id=f"q{i}c{n}", text=text, source="golden", position=n, score=1.0)
         for n, text in enumerate(item.reference_contexts)]
        for i, item in enumerate(golden.questions)
    ]  # fmt: skip


def given_contexts():
    """What a pipeline reads of its retriever when every question's contexts are given."""
    from types import SimpleNamespace

    from llmops.rag.retriever import RetrievalSettings

    return SimpleNamespace(index_version="golden", embedder=SimpleNamespace(model_id="none"),
                           settings=RetrievalSettings())  # fmt: skip


def main(argv=None) -> None:
    args = parse_args(argv)
    from llmops.prompts import load_prompt
    from llmops.rag.evaluation import load_golden
    from llmops.rag.generators import TransformersGenerator
    from llmops.rag.pipeline import RagPipeline
    from llmops.threads import configure_torch_threads

    threads = configure_torch_threads(args.threads)
    golden = load_golden(args.golden)
    if args.quick:
        golden = golden.model_copy(update={"questions": golden.questions[:QUICK_QUESTIONS]})
    questions = [item.question for item in golden.questions]
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            from llmops.llm.tiny import build_tiny_causal_lm

            model = build_tiny_causal_lm(Path(tmp) / "tiny", vocab_size=300, architecture="llama")
            hits, retriever = reference_hits(golden), given_contexts()
        else:
            from llmops.llm.base_models import resolve_base_model

            model = resolve_base_model("smollm2-135m-instruct").path
            hits, retriever = retrieved(args.docs, questions, Path(tmp) / "index")
        generator = TransformersGenerator(str(model))
        pipeline = RagPipeline(retriever, load_prompt("rag_answer"), generator)
        print(f"{len(questions)} questions, model {Path(model).name}, {threads} torch thread(s), "
              f"batch {generator.batch_size}", flush=True)  # fmt: skip
        pipeline.answer_from(questions[0], hits[0])  # warm-up: first forward passes allocate

        began = time.perf_counter()
        alone = [pipeline.answer_from(q, h) for q, h in zip(questions, hits, strict=True)]
        sequential = time.perf_counter() - began
        print(f"sequential: {sequential:.1f} s ({len(questions) / sequential:.2f} questions/s)", flush=True)

        began = time.perf_counter()
        batched = pipeline.answer_many(questions, hits)
        together = time.perf_counter() - began
        print(f"batched:    {together:.1f} s ({len(questions) / together:.2f} questions/s)", flush=True)
        shape(
            generator,
            [pipeline.request(q, pipeline.fitted(q, h)) for q, h in zip(questions, hits, strict=True)],
        )
        if args.record:
            record(args, golden, retriever, hits, batched)
    same = sum(a.answer == b.answer for a, b in zip(alone, batched, strict=True))
    print(f"answers equal to the sequential ones: {same}/{len(questions)}")
    print(f"candidate answering: batched / sequential = {sequential / together:.2f}x (target >= 4x)")


def shape(generator, requests) -> None:
    """Prompt tokens, the prefix every prompt shares, and the padding of one prefill of them all."""
    backend = generator.backend
    ids = [
        backend.tokenizer(backend.render(r.messages), add_special_tokens=False)["input_ids"] for r in requests
    ]
    shared = min(len(i) for i in ids)
    for other in ids[1:]:
        same = (n for n, (a, b) in enumerate(zip(ids[0], other, strict=False)) if a != b)
        shared = min(shared, next(same, len(other)))
    rests = [len(i) - shared for i in ids]
    padded = max(rests) * len(rests)
    lengths = [len(i) for i in ids]
    print(f"prompts: {min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / len(ids):.0f}), "
          f"{shared} shared by all; one prefill of the rest pads {padded - sum(rests)} of {padded} tokens "
          f"({1 - sum(rests) / padded:.0%})", flush=True)  # fmt: skip


def record(args, golden, retriever, hits, answers) -> None:
    """Full evaluations of the extractive generator and the LLM's ``answers``, per question."""
    import json

    from llmops.prompts import load_prompt
    from llmops.rag.evaluation import evaluate_pipeline
    from llmops.rag.generators import ExtractiveGenerator
    from llmops.rag.pipeline import RagPipeline

    extractive = RagPipeline(retriever, load_prompt("rag_answer"), ExtractiveGenerator(retriever.embedder))
    found = {}
    for name, given in (
        ("extractive", None),
        ("base", answers),
    ):  # the LLM's answers: scored, not asked again
        result = evaluate_pipeline(extractive, golden, K, hits=hits, answers=given)
        metrics = ("answer_key", "rouge_l", "string_similarity")
        rows = [{m: row["scores"].get(m) for m in metrics} for row in result.rows]
        found[name] = {"scores": result.scores, "rows": rows}
        print(f"{name}: {result.scores}", flush=True)
    path = Path(args.record)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[args.name] = {
        "golden": golden.content_version,
        "questions": len(golden.questions),
        "candidates": found,
    }
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"recorded {args.name} in {path}")


if __name__ == "__main__":
    main()
