"""Instruction datasets for fine-tuning: JSON Lines of ``{"instruction", "input"?, "response"}``.

    records = load_instructions("datasets/llmops_instructions.jsonl")
    train, held_out = split_records(records, eval_fraction=0.2, seed=0)

Every line is checked; a file with bad lines fails once, listing each bad line by number and
field (``line 7: response: Field required``), so a user fixes them all in one go. The version is
a hash of the normalised records (``sft-…``): the same examples give the same version whatever
the key order or whitespace of the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmops.errors import LlmopsError, field_problems

MAX_REPORTED = 20  # bad lines named in one error


class DatasetError(LlmopsError, ValueError):
    """A dataset file that cannot be used; names the file, the line and the field."""


class InstructionRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    instruction: str = Field(min_length=1)
    input: str = ""  # optional context for the instruction
    response: str = Field(min_length=1)

    def user_message(self) -> str:
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction


def load_instructions(path: str | Path, *, min_records: int = 4) -> list[InstructionRecord]:
    """The records of a JSONL file; raises :class:`DatasetError` naming every bad line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"--dataset: file not found: {path}")
    records: list[InstructionRecord] = []
    problems: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"line {number}: not valid JSON ({exc.msg})")
                continue
            if not isinstance(raw, dict):
                problems.append(f"line {number}: expected a JSON object, got {type(raw).__name__}")
                continue
            try:
                records.append(InstructionRecord.model_validate(raw))
            except ValidationError as exc:
                problems.append(f"line {number}: {field_problems(exc)}")
    if problems:
        shown = problems[:MAX_REPORTED]
        more = f"\n  … and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise DatasetError(f"{path}: {len(problems)} bad line(s):\n  " + "\n  ".join(shown) + more)
    if len(records) < min_records:
        raise DatasetError(f"{path}: {len(records)} record(s); at least {min_records} are needed")
    return records


def dataset_version(records: list[InstructionRecord]) -> str:
    """``sft-`` + a hash of the records in file order (key order and spacing don't matter)."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record.model_dump(), sort_keys=True).encode())
        digest.update(b"\n")
    return "sft-" + digest.hexdigest()[:12]


def split_records(
    records: list[InstructionRecord], eval_fraction: float, seed: int
) -> tuple[list[InstructionRecord], list[InstructionRecord]]:
    """(train, held out), in file order. A record is held out when a hash of the seed and its
    content falls under ``eval_fraction``, so it keeps its side when the dataset grows: the next
    version's held-out examples are never the champion's training examples. At least one record
    ends on each side."""
    if not 0 < eval_fraction < 1:
        raise DatasetError(f"eval_fraction: must be between 0 and 1, got {eval_fraction}")

    def draw(record: InstructionRecord) -> float:  # uniform in [0, 1), fixed per (seed, record)
        body = f"{seed}\n" + json.dumps(record.model_dump(), sort_keys=True)
        return int(hashlib.sha256(body.encode()).hexdigest()[:12], 16) / 16**12

    draws = [draw(r) for r in records]
    held = {i for i, d in enumerate(draws) if d < eval_fraction}
    if not held:
        held = {min(range(len(records)), key=draws.__getitem__)}
    if len(held) == len(records):
        held.discard(max(range(len(records)), key=draws.__getitem__))
    return [r for i, r in enumerate(records) if i not in held], [
        r for i, r in enumerate(records) if i in held
    ]


# ---- grounded question answering about this project ------------------------------------------

GROUNDED_INSTRUCTION = "Answer the question from the context and cite the source file in brackets."
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(])")
_TERM = re.compile(r"[a-z0-9_]+")
_STOP = frozenset(
    "a an and are as at be by can do does for from how i if in is it its my of on or the this to what "
    "when where which who why with you your that than then there these they not no".split()
)


MIN_CONTEXT_CHARS = 80


class GroundedSettings(BaseModel):
    """How the grounded dataset is built; the defaults are what the shipped file was built with."""

    model_config = ConfigDict(extra="forbid")

    chunk_size: int = Field(300, ge=100)  # characters per context chunk (short: CPU training budget)
    contexts: int = Field(2, ge=1)  # chunks given with each question
    max_answer_words: int = Field(35, ge=5)


def terms(text: str) -> list[str]:
    """Lowercase content words (stop words dropped): what lexical retrieval and support compare."""
    return [t for t in _TERM.findall(text.lower()) if t not in _STOP]


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(" ".join(text.split())) if s.strip()]


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

    def contexts_for(question: str, evidence: list[str]) -> list[tuple[str, str]]:
        order = ranked(question)
        chosen = order[: settings.contexts]
        if not any(is_relevant(chunks[i].text, evidence) for i in chosen):
            supporting = next((i for i in order if is_relevant(chunks[i].text, evidence)), None)
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
            contexts = contexts_for(question, [answer])
            if contexts:
                records.append(grounded_record(question, contexts, answer, f"{prefix}/{document.path}"))
    for item in load_golden(golden).questions:
        contexts = contexts_for(item.question, item.reference_contexts)
        if contexts:
            source = item.sources[0] if item.sources else contexts[0][0]
            records.append(grounded_record(item.question, contexts, item.reference, source))
    return records


def write_jsonl(records: list[dict], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
