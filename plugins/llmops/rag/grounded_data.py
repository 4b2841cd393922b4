"""Grounded question answering about a corpus, as instruction data: a question, retrieved context
chunks, and an answer that uses the context and cites its file. ``scripts/build_sft_data.py``
builds the shipped ``datasets/llmops_instructions.jsonl`` with it from ``docs/`` and the golden set.

It reads the corpus with the RAG pipeline's loaders, so it is kept apart from the modules the LLM
service imports (the LLM bento leaves it out).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from llmops.text import sentences, terms

GROUNDED_INSTRUCTION = "Answer the question from the context and cite the source file in brackets."


MIN_CONTEXT_CHARS = 80


class GroundedSettings(BaseModel):
    """How the grounded dataset is built; the defaults are what the shipped file was built with."""

    model_config = ConfigDict(extra="forbid")

    chunk_size: int = Field(300, ge=100)  # characters per context chunk (short: CPU training budget)
    contexts: int = Field(2, ge=1)  # chunks given with each question
    max_answer_words: int = Field(35, ge=5)


def grounded_record(question: str, contexts: list[tuple[str, str]], answer: str, source: str) -> dict:
    """One record: the instruction, then in ``input`` the numbered contexts (source, text) and
    the question, and the answer with its citation, e.g. ``… [docs/gate.md]``."""
    context = "\n\n".join(f"[{i}] {src}\n{text}" for i, (src, text) in enumerate(contexts, start=1))
    return {
        "instruction": GROUNDED_INSTRUCTION,
        "input": f"Context:\n{context}\n\nQuestion: {question}",  # last: a cut prompt keeps it
        "response": f"{answer} [{source}]",
    }


def _first_prose_sentence(section: str, max_words: int) -> str | None:
    """The first sentence of a section's first paragraph of prose (not code, table, list, quote)."""
    in_code = False
    for paragraph in section.split("\n\n"):
        stripped = paragraph.strip()
        if stripped.startswith("```"):
            in_code = stripped.count("```") % 2 == 1
            continue
        if in_code or not stripped or stripped[0] in "#|->*<`" or stripped[0].isdigit():
            continue
        first = sentences(stripped)[0]
        words = first.split()
        if len(words) < 6 or len(words) > max_words:
            return None
        return first
    return None


def build_grounded_records(
    docs: str | Path, golden: str | Path, settings: GroundedSettings | None = None
) -> list[dict]:
    """Grounded question-answering records about this project, built the same way every time.

    The docs are cut into short chunks (the RAG chunker). Questions come from two places: every
    ``##`` section of the docs whose first paragraph opens with a sentence of at most
    ``max_answer_words`` words ("What do the docs say about the rules in the promotion gate?",
    answered by that sentence) and every golden-set question (answered by its reference). Each
    question gets the ``contexts`` chunks that rank highest by IDF-weighted word overlap with it;
    when none of them holds the answer's source text, the best chunk that does replaces the last
    one, so every answer is supported by its context. The answer cites the file it came from."""
    import math
    from collections import Counter

    from llmops.rag.chunking import ChunkingConfig, split_documents
    from llmops.rag.documents import load_corpus
    from llmops.rag.evaluation import is_relevant, load_golden

    settings = settings or GroundedSettings()
    root = Path(docs)
    prefix = root.resolve().name
    corpus = load_corpus(root)
    chunks = split_documents(
        corpus.documents, ChunkingConfig(chunk_size=settings.chunk_size, chunk_overlap=0)
    )
    chunks = [c for c in chunks if len(c.text) >= MIN_CONTEXT_CHARS]  # a bare heading answers nothing
    chunk_terms = [set(terms(c.text)) for c in chunks]
    frequency = Counter(t for ts in chunk_terms for t in ts)
    idf = {t: math.log(len(chunks) / n) + 1 for t, n in frequency.items()}

    def ranked(question: str) -> list[int]:
        wanted = set(terms(question))
        scores = [sum(idf[t] for t in wanted & ts) for ts in chunk_terms]
        return sorted(range(len(chunks)), key=lambda i: (-scores[i], i))

    def contexts_for(question: str, evidence: list[str], source: str | None) -> list[tuple[str, str]]:
        def supports(i: int) -> bool:  # from the cited file: another file may quote the same text
            same_file = source is None or f"{prefix}/{chunks[i].source}" == source
            return same_file and is_relevant(chunks[i].text, evidence)

        order = ranked(question)
        chosen = order[: settings.contexts]
        if not any(supports(i) for i in chosen):
            supporting = next((i for i in order if supports(i)), None)
            if supporting is None:
                return []
            chosen[-1] = supporting
        return [(f"{prefix}/{chunks[i].source}", chunks[i].text) for i in chosen]

    records = []
    for document in corpus.documents:
        if document.kind != "markdown":
            continue
        title = document.text.lstrip("# ").splitlines()[0].strip()
        for section in re.split(r"\n(?=## )", document.text)[1:]:
            heading, _, body = section.partition("\n")
            answer = _first_prose_sentence(body, settings.max_answer_words)
            if answer is None:
                continue
            topic = heading.lstrip("# ").strip()
            subject = title.partition(":")[0].strip()
            question = f"What do the docs say about {topic[0].lower() + topic[1:]} in {subject.lower()}?"
            cited = f"{prefix}/{document.path}"
            contexts = contexts_for(question, [answer], cited)
            if contexts:
                records.append(grounded_record(question, contexts, answer, cited))
    for item in load_golden(golden).questions:
        contexts = contexts_for(
            item.question, item.reference_contexts, item.sources[0] if item.sources else None
        )
        if contexts:
            source = item.sources[0] if item.sources else contexts[0][0]
            records.append(grounded_record(item.question, contexts, item.reference, source))
    return records


def write_jsonl(records: list[dict], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
