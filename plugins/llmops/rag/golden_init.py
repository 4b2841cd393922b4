"""A starter golden set for a new corpus: ``llmops rag golden init --docs DIR``.

Writing a golden set by hand is the step that stops a new user, so this drafts one from the
corpus itself. Each file is read as Markdown, reStructuredText or plain text (``rag.markup``:
wrapped lines joined, badges, images, HTML and directives dropped, rST underlined and overlined
titles read as headings) and split into sections under its headings. Every question names the
document's subject, so that it is not ambiguous across files: the title when it names the file
(``# httpx``, ``Colorama`` underlined), else the file name's stem (a README whose title is a logo or
a tagline). The questions take the forms users ask, each answered by one excerpt of its section:

    How do I install <subject>?                under an installation heading
    What is the default <thing> in <subject>?  a sentence that states a default
    Which <features> does <subject> offer?     a list under a heading or intro naming a plural
    How do I <do this> with <subject>?         under a heading that names an action ("Running tests")
    <a heading that is a question>             "What is websockets?"
    What is <subject>?                         the first sentence before any section
    What does <term> do in <subject>?          a "Term: description" list item
    What does <subject> say about <heading>?   any other section

Every reference context is a verbatim excerpt of its file (whitespace aside: what the evaluation's
relevance rule matches): a whole sentence, list item or table-free line, never markup. Files take
turns, each giving its questions in the order above. The draft is a start, not a benchmark: the
user rewrites the questions the way people ask them, drops the trivial ones, and adds the ones
that matter.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import yaml

from llmops.errors import LlmopsError
from llmops.rag import markup
from llmops.rag.documents import Corpus, load_corpus
from llmops.rag.evaluation import GoldenItem, GoldenSet

_LIST_TERM = re.compile(
    r"^(?:\*\*|__|`)?(?!(?:in|on|for|to|of|a|an|the|with|does|do|is|are|can)\b)([A-Za-z][^:*_`\[\]]{1,59}?)(?:\*\*|__|`)?\s*[:\u2014]\s+(.{8,})$"
)
_INSTALL = re.compile(r"\b(install|installation|installing|setup|getting started)\b", re.I)
_DEFAULT = re.compile(
    r"\b(?:the|its|a) default ([a-z][\w-]*(?: [a-z][\w-]*)?) (?:is|are|of|for|will|can|value)\b", re.I
)
_QUESTION_HEADING = re.compile(r"^(what|how|why|when|which|where|who|can|does|do|is|are|should)\b.*\?$", re.I)
_NOT_A_THING = {"is", "are", "to", "the", "a", "an", "value", "of", "in", "on", "for", "and", "or", "it"}
_PLURAL_HEADING = re.compile(r"^(?:(?:key|main|supported|optional|core)\s+)?([a-z]+(?:[ -][a-z]+)?s)$", re.I)
_INTRO_PLURAL = re.compile(r"\bthe following ([a-z][a-z -]*?s)\b|\b([a-z]+s) (?:include|are):$", re.I)
_CHANGELOG = re.compile(
    r"^(?:changelog|changes|release notes|release history|history|news)$|^\[?v?\d+\.\d+", re.I
)
# sections users do not ask about: a changelog, credits, links, the license
_SKIPPED = re.compile(
    r"\b(changes|changelog|release|history|news|sponsors?|thanks|credits|contributors|acknowledg\w*|"
    r"license|links|citation|cite|citing|portings|new|unreleased|v?\d+\.\d+\S*)\b",
    re.I,
)
_GERUND = re.compile(r"^([A-Za-z]+ing)\b(.*)$")
MIN_SENTENCE = 40
MIN_ITEM = 25


class GoldenInitError(LlmopsError, ValueError):
    """A starter golden set that cannot be written; names the option."""


def _squash(text: str) -> str:
    return " ".join(text.split())


def _plain(text: str) -> str:
    """A heading or title without inline marks (``**``, backticks, trailing colon)."""
    text = re.sub(r"[*`]+|(?<!\w)_+|_+(?!\w)", "", text)
    return _squash(re.sub(r"^[^\w(]+", "", text)).strip(" :.")  # no leading emoji or symbols


def subject_of(path: str, found: list[markup.Block]) -> str:
    """What the document is about, as a question names it: the title (the first readable unit, a
    heading) when it names the file's stem, cut to the stem's words when it is long or a question;
    else the stem as the text spells it (``HTTPX`` for httpx.md)."""
    stem = PurePosixPath(path).stem
    key = re.sub(r"[^a-z0-9]", "", stem.lower())
    readable = [b for b in found if b.kind != markup.MARKUP]
    title = _plain(readable[0].text) if readable and readable[0].kind == markup.HEADING else ""
    if title and key and key in re.sub(r"[^a-z0-9]", "", title.lower()):
        if len(title.split()) <= 3 and not title.endswith("?"):
            return title
        words = re.sub(r"[-_]", r"[\\s_-]?", re.escape(stem))
        named = re.search(words, title, re.I)
        if named:
            return named.group(0)
    spelled = re.findall(re.escape(stem).replace(r"\-", "[-_ ]"), " ".join(b.text for b in readable), re.I)
    if spelled:
        return max(sorted(set(spelled)), key=spelled.count)  # a tie: the same one every time
    return title if title and len(title.split()) <= 6 else stem


def _gerund_base(word: str) -> str:
    """ "Running" -> "run", "Using" -> "use", "Launching" -> "launch" (English spelling rules)."""
    base = word.lower()[:-3]
    if len(base) > 2 and base[-1] == base[-2] and base[-1] in "bdgmnprt" and base != "add":
        return base[:-1]  # running -> run
    if re.search(r"(?:^|[^aeiou])[aeiou][bcdgkmnprstvz]$", base) and base not in ("open", "listen"):
        return base + "e"  # using -> use, making -> make
    if base.endswith(("at", "iz", "ur", "ov", "dl", "lv", "rv", "rs", "uc", "nc", "ng", "ac")):
        return base + "e"  # creating -> create, resolving -> resolve, tracing -> trace
    return base


class _Section:
    def __init__(self, heading: str):
        self.heading = heading
        self.blocks: list[markup.Block] = []


def _sections(found: list[markup.Block]) -> list[_Section]:
    sections = [_Section("")]
    for block in found:
        if block.kind == markup.HEADING:
            sections.append(_Section(_plain(block.text)))
        elif block.kind != markup.MARKUP:
            sections[-1].blocks.append(block)
    return sections


def _excerpts(section: _Section, source: str) -> list[tuple[str, markup.Block]]:
    """The section's quotable excerpts, verbatim in ``source`` (whitespace aside), in order:
    sentences of at least MIN_SENTENCE characters and list items of at least MIN_ITEM."""
    from llmops.rag.generators import split_sentences

    out = []
    for block in section.blocks:
        if block.kind == markup.PROSE:
            pieces = [s for s in split_sentences(block.text) if len(s) >= MIN_SENTENCE]
        elif block.kind == markup.ITEM:
            pieces = [block.text] if len(block.text) >= MIN_ITEM else []
        else:
            continue
        for piece in pieces:
            if _squash(piece) in source and not markup.is_markup_line(piece) and "<" not in piece:
                out.append((piece, block))
    return out


def _best(excerpts: list[tuple[str, markup.Block]], question: str, kind: str | None = None) -> str | None:
    """The excerpt that shares the most content words with the question (what retrieval and a
    reader look for); then a plain one (no link or URL); then the first. An intro ending with
    ":" is never one: its answer follows it."""
    from llmops.text import terms

    asked = set(terms(question))
    ranked = [
        (-len(asked & set(terms(e))), "](" in e or "://" in e, n, e)
        for n, (e, b) in enumerate(excerpts)
        if (kind is None or b.kind == kind) and not e.endswith(":")  # an intro: its answer follows
    ]
    return min(ranked)[3] if ranked else None


def _item(question: str, excerpt: str, path: str) -> GoldenItem:
    return GoldenItem(question=question, reference=excerpt, reference_contexts=[excerpt], sources=[path])


def questions_for(path: str, text: str) -> list[GoldenItem]:
    """Questions drafted from one document, in the order of the module docstring's list."""
    found = markup.blocks(text, markup.markup_kind(path))
    subject = subject_of(path, found)
    source = _squash(text)
    forms = ("install", "which", "default", "how", "asked", "what", "term", "about")
    drafted: dict[str, list[GoldenItem]] = {form: [] for form in forms}
    sections = _sections(found)
    for n, section in enumerate(sections):
        excerpts = _excerpts(section, source)
        if _CHANGELOG.search(section.heading):
            break  # a changelog runs to the end of a README
        if not excerpts or _SKIPPED.search(section.heading):
            continue
        heading = section.heading

        def ask(form: str, question: str, kind: str | None = None, excerpts=excerpts) -> None:
            excerpt = _best(excerpts, question, kind)
            if excerpt:
                drafted[form].append(_item(question, excerpt, path))

        gerund = _GERUND.match(heading.split(":")[0])
        if gerund:
            rest = gerund.group(2).split()
            if heading.lower().startswith(("getting", "string", "thing")) or (
                len(rest) == 1 and not rest[0].endswith("s")
            ):
                gerund = None  # "Streaming mode": a noun phrase, not an action
        if n == 0 or (n == 1 and not sections[0].blocks):  # before any section, or under the title
            ask("what", f"What is {subject}?")
        elif _INSTALL.search(heading):
            ask("install", f"How do I install {subject}?")
        elif _QUESTION_HEADING.match(heading):
            ask("asked", heading if subject.lower() in heading.lower() else f"{heading[:-1]} in {subject}?")
        elif gerund:
            verb, rest = gerund.groups()
            ask("how", f"How do I {_gerund_base(verb)}{rest.lower()} with {subject}?")
        else:
            ask("about", f"What does {subject} say about {heading.lower()}?")
        if sum(b.kind == markup.ITEM for _, b in excerpts) >= 2:
            plural = _PLURAL_HEADING.match(heading)
            intro = next((_INTRO_PLURAL.search(b.text) for b in section.blocks if b.leads_list), None)
            noun = (intro.group(1) or intro.group(2)) if intro else plural.group(1) if plural else ""
            if noun:
                verb = (
                    "need"
                    if re.search(r"depend|requir", noun, re.I)
                    else "offer"
                    if "feature" in noun.lower()
                    else "support"
                )
                ask("which", f"Which {noun.lower()} does {subject} {verb}?", markup.ITEM)
        for excerpt, block in excerpts:
            default = _DEFAULT.search(excerpt)
            if default and block.kind == markup.PROSE:
                words = [w for w in default.group(1).split() if w.lower() not in _NOT_A_THING]
                if words:
                    thing = " ".join(words[:2]).lower()
                    drafted["default"].append(
                        _item(f"What is the default {thing} in {subject}?", excerpt, path)
                    )
            term = _LIST_TERM.match(excerpt) if block.kind == markup.ITEM else None
            if term and len(term.group(1).split()) <= 4:
                drafted["term"].append(
                    _item(f"What does {term.group(1).strip()} do in {subject}?", excerpt, path)
                )
    items: list[GoldenItem] = []
    seen: set[str] = set()
    for group in drafted.values():
        for item in group[:2]:  # at most two of a form per file
            if item.question not in seen and item.reference not in {i.reference for i in items}:
                seen.add(item.question)
                items.append(item)
    # a question whose own words (beyond the subject's) its excerpt states first: it is the one
    # the excerpt answers and the one a reader (and retrieval) can tell apart from the others
    from llmops.text import terms

    named = set(terms(subject))

    def stated(item: GoldenItem) -> int:
        return len((set(terms(item.question)) - named) & set(terms(item.reference)))

    return sorted(items, key=lambda item: -min(stated(item), 2))


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
        raise GoldenInitError("--docs: found no sections, sentences or lists to draft questions from")
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
