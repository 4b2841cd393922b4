"""A starter golden set for a new corpus: ``llmops rag golden init --docs DIR``.

Writing a golden set by hand is the step that stops a new user, so this drafts one from the
corpus itself: a question per section heading (answered by the first sentence under it) and per
"Term: description" list line (answered by that line). Every reference context is a verbatim
excerpt of its file, which is what the evaluation's relevance rule matches. The draft is a
start, not a benchmark: the user rewrites the questions the way people ask them, drops the
trivial ones, and adds the ones that matter.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from llmops.errors import LlmopsError
from llmops.rag.documents import Corpus, load_corpus
from llmops.rag.evaluation import GoldenItem, GoldenSet

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_LIST_TERM = re.compile(
    r"^\s*(?:[-*+]|\d+[.)])\s+(?:\*\*|__)?([^:*_]{2,60}?)(?:\*\*|__)?\s*[:\u2014]\s+(.{8,})$"
)
MIN_SENTENCE = 40


class GoldenInitError(LlmopsError, ValueError):
    """A starter golden set that cannot be written; names the option."""


def _first_sentence(lines: list[str]) -> str | None:
    """The first prose sentence of a section (no code, tables, lists or headings)."""
    from llmops.rag.generators import split_sentences

    in_code = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("```"):
            in_code = not in_code
            continue
        if in_code or not stripped or stripped.startswith(("|", "<", "!")) or _HEADING.match(line):
            continue
        if re.match(r"^\s*(?:[-*+>]|\d+[.)])\s", line):
            continue
        for sentence in split_sentences(stripped):
            if len(sentence) >= MIN_SENTENCE and sentence in " ".join(stripped.split()):
                return sentence
    return None


def questions_for(path: str, text: str) -> list[GoldenItem]:
    """Questions drafted from one document: headings first, then term lists, in file order."""
    lines = text.splitlines()
    items: list[GoldenItem] = []
    for n, line in enumerate(lines):
        heading = _HEADING.match(line)
        if heading:
            title = heading.group(1).strip("*_` ")
            if len(title) > 1 and title[1].islower():  # "The life of bees" -> "the life of bees"
                title = title[0].lower() + title[1:]
            section = []
            for later in lines[n + 1 :]:
                if _HEADING.match(later):
                    break
                section.append(later)
            sentence = _first_sentence(section)
            if sentence and len(title) >= 3:
                items.append(
                    GoldenItem(
                        question=f"What should I know about {title}?",
                        reference=sentence,
                        reference_contexts=[sentence],
                        sources=[path],
                    )
                )
            continue
        term = _LIST_TERM.match(line)
        if term:
            excerpt = " ".join(re.sub(r"^\s*(?:[-*+]|\d+[.)])\s+", "", line).split())
            items.append(
                GoldenItem(
                    question=f"What is {term.group(1).strip()}?",
                    reference=excerpt,
                    reference_contexts=[excerpt],
                    sources=[path],
                )
            )
    return items


def starter_golden(corpus: Corpus, max_questions: int = 30) -> GoldenSet:
    """Up to ``max_questions`` drafted questions, taken from each file in turn so that every file
    is asked about; a question asked twice (the same heading in two files) is kept once."""
    per_file = [
        questions_for(doc.path, doc.text) for doc in corpus.documents if doc.kind in ("markdown", "text")
    ]
    chosen: list[GoldenItem] = []
    seen: set[str] = set()
    for round_ in range(max((len(q) for q in per_file), default=0)):
        for questions in per_file:
            if round_ < len(questions) and questions[round_].question not in seen:
                seen.add(questions[round_].question)
                chosen.append(questions[round_])
    if not chosen:
        raise GoldenInitError("--docs: found no headings or term lists to draft questions from")
    return GoldenSet(questions=chosen[:max_questions])


def write_starter_golden(
    docs: str | Path, out: str | Path, max_questions: int = 30, force: bool = False
) -> GoldenSet:
    """Draft a golden set from the corpus at ``docs`` and write it to ``out`` as YAML."""
    out = Path(out)
    if max_questions < 1:
        raise GoldenInitError(f"--max-questions: must be at least 1, got {max_questions}")
    if out.exists() and not force:
        raise GoldenInitError(f"--out: {out} exists; pass --force to replace it")
    golden = starter_golden(load_corpus(docs), max_questions)
    header = (
        f"# Starter golden set drafted by `llmops rag golden init --docs {docs}`.\n"
        "# Edit it before trusting the gate: ask the questions the way your users would, drop the\n"
        "# trivial ones, add the ones that matter. reference_contexts must stay verbatim excerpts of\n"
        "# the files (the evaluation finds them in the retrieved chunks); keys (optional) are short\n"
        "# facts a correct answer states.\n"
    )
    body = yaml.safe_dump(
        golden.model_dump(exclude_defaults=False), sort_keys=False, allow_unicode=True, width=100
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + body)
    return golden
