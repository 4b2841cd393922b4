"""The readable units of a Markdown, reStructuredText or plain-text document, without its markup.

Real documents (package READMEs) wrap one sentence over several source lines and carry badges,
images, HTML and reStructuredText directives between the prose. Every consumer that reads text
for its meaning (the extractive answer, the starter golden set, BM25 terms and the embedder) goes
through this module, so they agree on what a sentence, a list item or a heading is:

    blocks(text, kind)        the document as Blocks: prose paragraphs and list items reflowed
                              (soft-wrapped lines joined by one space), headings (ATX, setext, rST
                              underlined and overlined titles), code blocks and tables as their
                              own units, and markup blocks (badges, images, HTML-only lines,
                              link-only lines, rST directives and comments, HTML comments, rules)
    reflow(text, kind)        the readable units as text: one unit per paragraph, markup dropped,
                              inline noise (HTML tags, images, badges, rST substitutions) removed,
                              links and emphasis kept as written
    clean_text(text, kind)    (clean, offsets): the text BM25 and the embedder should see (inline
                              markup unwrapped too: ``[text](url)`` -> ``text``, ``**b**`` -> ``b``)
                              and, for each of its characters, the offset of the source character
                              it came from (a space joining two lines maps to the line break), so
                              a span of the clean text maps back to the source (``source_span``)
    is_markup_line(line)      whether one line is markup only (nothing a reader would quote)
    markup_kind(path)         "markdown", "rst" or "text" from a file name

``kind`` is "markdown", "rst", "text" or "auto" (a chunk whose file is unknown: guessed from its
lines by :func:`guess_kind`). Markdown and reStructuredText share most rules (setext and rST
underlined titles are the same shape); the kind decides how an indented block reads: code in
Markdown, a quoted paragraph in reStructuredText and plain text unless a ``::`` paragraph or a
``>>>`` prompt introduces it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from llmops.errors import LlmopsError

KINDS = ("markdown", "rst", "text", "auto")

# a unit's kind in Block.kind
PROSE, ITEM, HEADING, CODE, TABLE, MARKUP = "prose", "item", "heading", "code", "table", "markup"

_FENCE = re.compile(r"^\s{0,3}(```+|~~~+)")
_ATX = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+:._])\1{2,}\s*$")
_RULE = re.compile(r"^\s{0,3}([-*_])(?:\s*\1){2,}\s*$")
_ITEM = re.compile(r"^(\s*)(?:[-*+\u2022]|\d{1,3}[.)]|#\.)\s+(?=\S)")
_DIRECTIVE = re.compile(r"^\s*\.\.(?:\s|$)")
_DIRECTIVE_NAME = re.compile(r"^\s*\.\.\s+(?:\|[^|]+\|\s+)?([\w:-]+?)::")
_OPTION = re.compile(r"^\s+:[\w -]+:(?:\s|$)")
_MD_TABLE = re.compile(r"^\s{0,3}\|.*\|\s*$|^\s{0,3}[^|\s][^|]*\|[^|]*\S\s*$")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)*\|?\s*$")
_GRID = re.compile(r"^\s*\+[-=+]+\+\s*$")
_SIMPLE_TABLE = re.compile(r"^\s*=+(?:\s+=+)+\s*$")
_LINK_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*\S+")
_QUOTE = re.compile(r"^\s{0,3}>\s?")
_ALERT = re.compile(r"^\s*\[!\w+\]\s*$")
_HTML_OPEN = re.compile(r"^\s*<!--")
_DOCTEST = re.compile(r"^\s*>>>")
_HTML_BLOCK = re.compile(
    r"^\s*</?(?:p|div|h[1-6]|picture|source|img|a|br|table|tr|td|th|details|summary|center|span|b|strong|em|sup|ul|ol|li)\b",
    re.I,
)
_NAV = re.compile(r"\s+[|·•]\s+|\s+[|·•]\s*$|^\s*[|·•]\s+")

_CODE_DIRECTIVES = {"code", "code-block", "sourcecode", "doctest", "parsed-literal", "highlight"}
_PROSE_DIRECTIVES = {
    "note", "warning", "tip", "important", "attention", "caution", "danger", "error", "hint",
    "seealso", "admonition", "versionadded", "versionchanged", "deprecated", "topic", "sidebar",
}  # fmt: skip

# inline noise: never readable, removed in every mode
_NOISE = re.compile(
    r"\[!\[[^\]]*\]\([^)]*\)\]\([^)]*\)"  # a badge: a linked image
    r"|\[!\[[^\]]*\]\[[^\]]*\]\]\[[^\]]*\]"  # a badge with reference links
    r"|!\[[^\]]*\]\([^)]*\)|!\[[^\]]*\]\[[^\]]*\]"  # an image
    r"|<!--.*?-->"  # an HTML comment
    r"|</?(?:a|abbr|b|big|blockquote|br|center|code|del|details|div|em|font|h[1-6]|hr|i|iframe|img|"
    r"ins|kbd|li|ol|p|picture|pre|s|small|source|span|strong|sub|summary|sup|svg|table|tbody|td|th|"
    r"thead|tr|tt|u|ul|video)(?:\s[^<>]*)?/?>"  # an HTML tag
    r"|(?<![\w|])\|[^\s|](?:[^|]*[^\s|])?\|_{0,2}(?![\w|])"  # an rST substitution (|badge|)
)
# inline markup unwrapped by clean_text: (pattern, group kept)
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)|\[([^\]]+)\]\[[^\]]*\]")
_RST_LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`__?|`([^`]+)`__?(?!\w)")
_RST_ROLE = re.compile(r":[\w.+-]+:`([^`]+)`")
_AUTOLINK = re.compile(r"<(https?://[^>\s]+)>")
_EMPHASIS = re.compile(r"\*\*|__(?=\w)|(?<=\w)__|``|`|(?<![\w*])\*(?=\S)|(?<=\S)\*(?![\w*])")
_URL = re.compile(r"https?://\S+")
_LEFTOVER = re.compile(r"^[\s|·•\-–—,.:;/()\[\]]*$")


@dataclass
class Block:
    """One readable unit: ``text`` as a reader sees it, ``offsets[i]`` the source offset of
    ``text[i]``; ``start``/``end`` the source span of the whole block. ``leads_list``: a prose
    paragraph ending with ``:`` right before a list (the list's intro line)."""

    kind: str
    text: str
    start: int
    end: int
    offsets: list[int] = field(repr=False, default_factory=list)
    leads_list: bool = False


def markup_kind(path: str) -> str:
    """ "markdown", "rst" or "text" from a file name (the corpus loader reads ``.rst`` as text)."""
    suffix = PurePosixPath(path).suffix.lower()
    return {".md": "markdown", ".markdown": "markdown", ".rst": "rst"}.get(suffix, "text")


def guess_kind(text: str) -> str:
    """The kind of a text whose file is unknown (a retrieved chunk): "rst" when it holds an rST
    directive, comment or ``::`` literal block and no Markdown fence or ATX heading."""
    markdown = re.search(r"^\s{0,3}(```|~~~|#{1,6}\s)|\]\(", text, re.M)
    rst = re.search(r"^\.\.\s+\S|::\s*$|``\w", text, re.M)
    return "rst" if rst and not markdown else "markdown"


def is_markup_line(line: str, kind: str = "auto") -> bool:
    """True when ``line`` holds nothing a reader would quote: only images, badges, HTML tags or
    comments, links or URLs (with separators), an rST directive, comment, option or substitution
    line, a Markdown link definition, a horizontal rule or a GitHub alert marker."""
    stripped = line.strip()
    if not stripped:
        return False
    if _DIRECTIVE.match(line) or _OPTION.match(line) or _LINK_DEF.match(line) or _ALERT.match(stripped):
        return True
    if _RULE.match(line):
        return True
    if stripped.startswith("<!--") or stripped.endswith("-->"):
        return True
    rest = _NOISE.sub(" ", _QUOTE.sub("", line))
    if _LEFTOVER.match(rest):
        return True  # tags, images, badges, substitutions and separators only
    parts = [p for p in _NAV.split(rest) if p.strip()]
    if (
        len(_NAV.findall(rest)) >= 2
        and not rest.lstrip().startswith("|")
        and all(len(p.split()) <= 3 for p in parts)
    ):
        return True  # a navigation bar: short entries between separators
    return _links_only(rest)


def _links_only(line: str) -> bool:
    """Links and URLs with separators, nothing else (in a paragraph, such a line continues it)."""
    rest = _URL.sub(" ", _AUTOLINK.sub(" ", _MD_LINK.sub(" ", _RST_LINK.sub(" ", _NOISE.sub(" ", line)))))
    return bool(_LEFTOVER.match(rest)) and rest.strip() != line.strip()


def blocks(text: str, kind: str = "auto") -> list[Block]:
    """The document's units in order (see the module docstring); markup blocks included, so a
    consumer sees where they were."""
    if kind not in KINDS:
        raise MarkupError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "auto":
        kind = guess_kind(text)
    lines, pos = [], 0
    for raw in text.splitlines(keepends=True):
        lines.append((raw.rstrip("\r\n"), pos))
        pos += len(raw)
    out = _Parser(kind).parse(lines)
    for i, block in enumerate(out):
        if block.kind == PROSE and block.text.rstrip().endswith(":"):
            following = next((b for b in out[i + 1 :] if b.kind != MARKUP), None)
            block.leads_list = following is not None and following.kind == ITEM
    return out


def reflow(text: str, kind: str = "auto") -> str:
    """The readable units, one per paragraph (blank line between), markup blocks dropped and
    inline noise removed; code blocks and tables keep their lines."""
    return "\n\n".join(b.text for b in blocks(text, kind) if b.kind != MARKUP)


def clean_text(text: str, kind: str = "auto") -> tuple[str, list[int]]:
    """The text to index (for BM25 terms and the embedder) and the source offset of each of its
    characters. Markup blocks are dropped and inline markup unwrapped (links keep their text,
    emphasis and code marks go); units are separated by a newline, which maps to the source
    offset where the previous unit ended."""
    parts: list[str] = []
    offsets: list[int] = []
    for block in blocks(text, kind):
        if block.kind == MARKUP:
            continue
        body, where = (
            _unwrap(block.text, block.offsets) if block.kind != CODE else (block.text, block.offsets)
        )
        if block.kind == TABLE:
            body, where = _table_text(body, where)
        if not body.strip():
            continue
        if parts:
            parts.append("\n")
            offsets.append(offsets[-1] + 1 if offsets else 0)
        parts.append(body)
        offsets.extend(where)
    return "".join(parts), offsets


def source_span(offsets: list[int], start: int, end: int) -> tuple[int, int]:
    """The source span ``[start', end')`` of the clean text's ``[start, end)``."""
    if not offsets or start >= end:
        at = offsets[min(start, len(offsets) - 1)] if offsets else 0
        return at, at
    return offsets[start], offsets[min(end, len(offsets)) - 1] + 1


class MarkupError(LlmopsError, ValueError):
    """A kind this module does not read; names the parameter."""


# --- parsing -----------------------------------------------------------------------------------

_Line = tuple[str, int]  # (text without its line break, source offset of its first character)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


class _Parser:
    def __init__(self, kind: str):
        self.kind = kind

    def parse(self, lines: list[_Line]) -> list[Block]:
        out: list[Block] = []
        para: list[_Line] = []
        literal_next = False  # an rST paragraph ended with "::": the indented block is code
        i = 0

        def flush() -> None:
            nonlocal literal_next
            if para:
                out.append(_inline_block(PROSE, para))
                literal_next = para[-1][0].rstrip().endswith("::")
                para.clear()

        while i < len(lines):
            line, at = lines[i]
            stripped = line.strip()
            nxt = lines[i + 1][0] if i + 1 < len(lines) else ""
            if not stripped:
                flush()
                i += 1
                continue
            if para and _indent(line) > 0 and self.kind != "markdown" and not _ITEM.match(line):
                para.append((line, at))  # an indented continuation (rST definition body)
                i += 1
                continue
            if _FENCE.match(line):
                flush()
                i = self._fence(lines, i, out)
                continue
            if _HTML_OPEN.match(line) and "-->" not in stripped:
                flush()
                j = i
                while j < len(lines) and "-->" not in lines[j][0]:
                    j += 1
                out.append(_raw_block(MARKUP, lines[i : j + 1]))
                i = j + 1
                continue
            if _DIRECTIVE.match(line):
                flush()
                i = self._directive(lines, i, out)
                continue
            if not para and _HTML_BLOCK.match(line):
                i = self._html(lines, i, out)
                continue
            if not para and _indent(line) > 0 and self._indented_is_code(line, literal_next, out):
                i = self._indented(lines, i, out)
                literal_next = False
                continue
            literal_next = False
            heading = self._heading(lines, i)
            if heading is not None and not para:
                end, title = heading
                out.append(
                    _inline_block(HEADING, [title])
                    if _readable(title[0])
                    else _raw_block(MARKUP, lines[i:end])
                )
                i = end
                continue
            if _ATX.match(line):
                flush()
                out.append(
                    _atx_block(line, at)
                    if _readable(_ATX.match(line).group(2))
                    else _raw_block(MARKUP, [lines[i]])
                )
                i += 1
                continue
            if is_markup_line(line, self.kind) and not (para and _links_only(line)):
                flush()
                out.append(_raw_block(MARKUP, [lines[i]]))
                i += 1
                continue
            if (
                _GRID.match(line)
                or _SIMPLE_TABLE.match(line)
                or (_MD_TABLE.match(line) and (_TABLE_RULE.match(nxt) or stripped.startswith("|")))
            ):
                flush()
                i = self._table(lines, i, out)
                continue
            if _ITEM.match(line) and not _RULE.match(line):
                flush()
                i = self._item(lines, i, out)
                continue
            quoted = _QUOTE.match(line)
            if quoted and self.kind == "markdown":
                para.append((line[quoted.end() :], at + quoted.end()))
            elif para and (_UNDERLINE.match(stripped) or _RULE.match(line)):
                flush()  # a rule right under a paragraph
                out.append(_raw_block(MARKUP, [lines[i]]))
            else:
                para.append((line, at))
            i += 1
        flush()
        return out

    def _heading(self, lines: list[_Line], i: int) -> tuple[int, _Line] | None:
        """(the index after the heading, its title line) for an underlined or overlined title."""
        line = lines[i][0].strip()
        nxt = lines[i + 1][0].strip() if i + 1 < len(lines) else ""
        after = lines[i + 2][0].strip() if i + 2 < len(lines) else ""
        if _UNDERLINE.match(line) and nxt and after and after == line and not _UNDERLINE.match(nxt):
            return i + 3, lines[i + 1]  # overlined and underlined
        if (
            line
            and _UNDERLINE.match(nxt)
            and not _UNDERLINE.match(line)
            and not _ITEM.match(lines[i][0])
            and _indent(lines[i][0]) <= 3
            and len(nxt) >= min(len(line), 3)
        ):
            return i + 2, lines[i]
        return None

    def _fence(self, lines: list[_Line], i: int, out: list[Block]) -> int:
        mark = _FENCE.match(lines[i][0]).group(1)
        j = i + 1
        while j < len(lines) and not lines[j][0].strip().startswith(mark[:3]):
            j += 1
        if lines[i + 1 : j]:
            out.append(_raw_block(CODE, lines[i + 1 : j]))
        return j + 1

    def _directive(self, lines: list[_Line], i: int, out: list[Block]) -> int:
        name = _DIRECTIVE_NAME.match(lines[i][0])
        base = _indent(lines[i][0])
        j = i + 1
        body: list[_Line] = []
        while j < len(lines):
            line = lines[j][0]
            if line.strip() and _indent(line) <= base:
                break
            if not line.strip():
                later = next((x[0] for x in lines[j:] if x[0].strip()), "")
                if _indent(later) <= base:
                    break
            body.append(lines[j])
            j += 1
        options = 0
        while options < len(body) and _OPTION.match(body[options][0]):
            options += 1
        out.append(_raw_block(MARKUP, lines[i : i + 1 + options]))
        rest = body[options:]
        directive = name.group(1).lower() if name else ""
        if rest and directive in _CODE_DIRECTIVES:
            out.append(_raw_block(CODE, _dedent(rest)))
        elif rest and directive in _PROSE_DIRECTIVES:
            out.extend(_Parser(self.kind).parse(_dedent(rest)))
        elif rest:
            out.append(_raw_block(MARKUP, rest))
        return j

    def _html(self, lines: list[_Line], i: int, out: list[Block]) -> int:
        """An HTML block (up to a blank line): its text without the tags, or markup when none."""
        j = i
        while j < len(lines) and lines[j][0].strip():
            j += 1
        block = _inline_block(PROSE, lines[i:j])
        if not _readable(block.text):
            block = _raw_block(MARKUP, lines[i:j])
        out.append(block)
        return j

    def _indented_is_code(self, line: str, literal_next: bool, out: list[Block]) -> bool:
        if literal_next or _DOCTEST.match(line):
            return True
        last = next((b for b in reversed(out) if b.kind != MARKUP), None)
        return self.kind == "markdown" and _indent(line) >= 4 and (last is None or last.kind != ITEM)

    def _indented(self, lines: list[_Line], i: int, out: list[Block]) -> int:
        j = i
        while j < len(lines):
            line = lines[j][0]
            if line.strip() and _indent(line) == 0:
                break
            if not line.strip():
                later = next((x[0] for x in lines[j:] if x[0].strip()), "")
                if _indent(later) == 0:
                    break
            j += 1
        out.append(_raw_block(CODE, _dedent(lines[i:j])))
        return j

    def _table(self, lines: list[_Line], i: int, out: list[Block]) -> int:
        first = lines[i][0]
        j = i + 1
        if _SIMPLE_TABLE.match(first):  # rST simple table: up to the border before a blank line
            while j < len(lines) and not (
                _SIMPLE_TABLE.match(lines[j][0]) and (j + 1 >= len(lines) or not lines[j + 1][0].strip())
            ):
                j += 1
            j = min(j + 1, len(lines))
        else:
            while (
                j < len(lines)
                and lines[j][0].strip()
                and (
                    _MD_TABLE.match(lines[j][0])
                    or _GRID.match(lines[j][0])
                    or lines[j][0].lstrip().startswith("|")
                )
            ):
                j += 1
        out.append(_raw_block(TABLE, lines[i:j]))
        return j

    def _item(self, lines: list[_Line], i: int, out: list[Block]) -> int:
        line, at = lines[i]
        marker = _ITEM.match(line)
        parts = [(line[marker.end() :], at + marker.end())]
        j = i + 1
        while j < len(lines):
            nxt = lines[j][0]
            if not nxt.strip() or _ITEM.match(nxt) or _FENCE.match(nxt) or _ATX.match(nxt):
                break
            if (
                _DIRECTIVE.match(nxt)
                or _MD_TABLE.match(nxt)
                or (is_markup_line(nxt) and not _links_only(nxt))
            ):
                break
            if _indent(nxt) <= _indent(line) and self.kind != "markdown":
                break  # rST: a continuation is indented
            if j + 1 < len(lines) and _UNDERLINE.match(lines[j + 1][0].strip()):
                break  # the next line is a title
            parts.append(lines[j])
            j += 1
        block = _inline_block(ITEM, parts)
        if is_markup_line(block.text, self.kind):  # a link-only item
            block.kind = MARKUP
        if len(block.text) >= 2:
            out.append(block)
        return j


def _dedent(lines: list[_Line]) -> list[_Line]:
    cut = min((_indent(t) for t, _ in lines if t.strip()), default=0)
    return [(t[cut:], at + cut) if t.strip() else ("", at) for t, at in lines]


def _readable(text: str) -> bool:
    return not _LEFTOVER.match(_NOISE.sub(" ", text)) and not is_markup_line(text)


def _atx_block(line: str, at: int) -> Block:
    title = _ATX.match(line)
    return _inline_block(HEADING, [(title.group(2), at + title.start(2))])


def _raw_block(kind: str, lines: list[_Line]) -> Block:
    """Lines kept as they are (code, tables, markup), joined by newlines; no blank first or last line."""
    while lines and not lines[0][0].strip():
        lines = lines[1:]
    while lines and not lines[-1][0].strip():
        lines = lines[:-1]
    text = "\n".join(t for t, _ in lines)
    offsets: list[int] = []
    for n, (t, at) in enumerate(lines):
        if n:
            offsets.append(offsets[-1] + 1 if offsets else at - 1)
        offsets.extend(range(at, at + len(t)))
    start = lines[0][1] if lines else 0
    end = lines[-1][1] + len(lines[-1][0]) if lines else 0
    return Block(kind, text, start, end, offsets)


def _inline_block(kind: str, lines: list[_Line]) -> Block:
    """Lines reflowed into one unit: inline noise removed, whitespace runs made one space."""
    chars: list[str] = []
    offsets: list[int] = []
    for t, at in lines:
        kept, where = _remove(t, at, _NOISE)
        if chars and kept:
            chars.append(" ")
            offsets.append(at - 1)  # the line break
        chars.append(kept)
        offsets.extend(where)
    text, offsets = _squeeze("".join(chars), offsets)
    start = lines[0][1] if lines else 0
    end = lines[-1][1] + len(lines[-1][0]) if lines else 0
    return Block(kind, text, start, end, offsets)


def _remove(text: str, at: int, pattern: re.Pattern) -> tuple[str, list[int]]:
    """``text`` without the matches of ``pattern``, and each kept character's offset (``at`` + its
    index in ``text``)."""
    pieces: list[str] = []
    where: list[int] = []
    last = 0
    for m in pattern.finditer(text):
        pieces.append(text[last : m.start()])
        where.extend(range(at + last, at + m.start()))
        last = m.end()
    pieces.append(text[last:])
    where.extend(range(at + last, at + len(text)))
    return "".join(pieces), where


_SPACE_RUN = re.compile(r"\s{2,}|[^\S ]")  # what is not already one plain space


def _squeeze(text: str, offsets: list[int]) -> tuple[str, list[int]]:
    """Whitespace runs become one space, none at either end."""
    pieces: list[str] = []
    where: list[int] = []
    last = 0
    for m in _SPACE_RUN.finditer(text):
        pieces.append(text[last : m.start()])
        where.extend(offsets[last : m.start()])
        pieces.append(" ")
        where.append(offsets[m.start()])
        last = m.end()
    pieces.append(text[last:])
    where.extend(offsets[last:])
    out = "".join(pieces)
    start = 1 if out.startswith(" ") else 0
    end = len(out) - 1 if out.endswith(" ") and len(out) > start else len(out)
    return out[start:end], where[start:end]


def _unwrap(text: str, offsets: list[int]) -> tuple[str, list[int]]:
    """Links keep their text, roles their target, emphasis and code marks go (clean_text)."""
    for pattern in (_RST_LINK, _RST_ROLE, _MD_LINK, _AUTOLINK):
        text, offsets = _keep_groups(text, offsets, pattern)
    kept, where = _remove(text, 0, _EMPHASIS)
    return _squeeze(kept, [offsets[k] for k in where])


def _keep_groups(text: str, offsets: list[int], pattern: re.Pattern) -> tuple[str, list[int]]:
    chars: list[str] = []
    where: list[int] = []
    last = 0
    for m in pattern.finditer(text):
        chars.append(text[last : m.start()])
        where.extend(offsets[last : m.start()])
        group = next(g for g in range(1, (pattern.groups or 0) + 1) if m.group(g) is not None)
        chars.append(m.group(group))
        where.extend(offsets[m.start(group) : m.end(group)])
        last = m.end()
    chars.append(text[last:])
    where.extend(offsets[last:])
    return "".join(chars), where


def _table_text(text: str, offsets: list[int]) -> tuple[str, list[int]]:
    """A table's cells as words: rule rows dropped, cell borders made spaces."""
    chars: list[str] = []
    where: list[int] = []
    start = 0
    for line in text.split("\n"):
        end = start + len(line)
        if not (_TABLE_RULE.match(line) or _GRID.match(line) or _SIMPLE_TABLE.match(line)):
            if chars:
                chars.append("\n")
                where.append(offsets[start - 1] if start else 0)
            for k in range(start, end):
                chars.append(" " if text[k] in "|+" else text[k])
                where.append(offsets[k])
        start = end + 1
    body = "".join(chars)
    lines_out, where_out, pos = [], [], 0
    for line in body.split("\n"):
        squeezed, w = _squeeze(line, where[pos : pos + len(line)])
        if squeezed:
            if lines_out:
                lines_out.append("\n")
                where_out.append(where_out[-1] + 1 if where_out else 0)
            lines_out.append(squeezed)
            where_out.extend(w)
        pos += len(line) + 1
    return "".join(lines_out), where_out
