"""Split documents into chunks with LangChain's text splitters.

Markdown is split on headings, then paragraphs, then sentences; other text (reStructuredText
included: LangChain's rST separators cut a title from its underline) on paragraphs, lines and
words. The chunk size can differ by document kind (``ChunkingConfig.kind_sizes``). Every chunk
keeps its source path, its position in the document, its start offset and the document's content
hash.

What is stored, shown and ranked by BM25 is the chunk's own text, at its offset. What is embedded
is ``Chunk.index_text``: the text without markup (:func:`llmops.rag.markup.clean_text`: no
badges, images, HTML or directives, links and emphasis unwrapped). ``content_hash`` is the hash of
that text: the key for reusing embeddings. With ``heading_prefix`` a chunk also carries its
heading path, the file's name and the section titles above it (``"httpx > Features"``), put
before its text for the embedder and BM25; measured on both golden sets it cost hit@1
(bench/rag_quality.py), so it is off by default.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from llmops.rag.documents import KINDS as _SUFFIXES
from llmops.rag.documents import SourceDocument, text_hash

KINDS = tuple(dict.fromkeys(_SUFFIXES.values()))  # markdown, text, html, pdf


class ChunkingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chunk_size: int = Field(800, ge=50, le=20_000)  # characters
    chunk_overlap: int = Field(120, ge=0)
    # chunk size of a document kind (markdown | text | html | pdf), where it differs from chunk_size
    kind_sizes: dict[str, int] = Field(default_factory=dict)
    # index each chunk with its heading path first (see the module docstring)
    heading_prefix: bool = False

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingConfig:
        for kind, size in {"": self.chunk_size, **self.kind_sizes}.items():
            name = f"kind_sizes.{kind}" if kind else "chunk_size"
            if kind and kind not in KINDS:
                raise ValueError(f"kind_sizes: unknown kind {kind!r} (use one of {list(KINDS)})")
            if not 50 <= size <= 20_000:
                raise ValueError(f"{name}: must be between 50 and 20000 characters, got {size}")
            if self.chunk_overlap >= size:
                raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be smaller than {name} ({size})")
        return self

    def size(self, kind: str) -> int:
        """The chunk size of documents of ``kind``."""
        return self.kind_sizes.get(kind, self.chunk_size)

    def key(self) -> str:
        # v2: chunks are embedded without their markup (Chunk.index_text)
        return json.dumps({"splitter": "recursive-v2", **self.model_dump()}, sort_keys=True)


class Chunk(BaseModel):
    id: str
    text: str
    source: str
    position: int  # 0-based index of the chunk in its document
    start: int  # character offset in the document's text
    doc_hash: str
    content_hash: str
    kind: str
    heading: str = ""  # with heading_prefix: the file's name and the titles above, "httpx > Features"

    _index_text: str | None = PrivateAttr(None)  # computed once: reading markup is not free

    @property
    def index_text(self) -> str:
        """What the embedder and BM25 read: see :func:`index_text`."""
        if self._index_text is None:
            self._index_text = index_text(self.text, self.heading, self.source)
        return self._index_text

    def metadata(self) -> dict[str, str | int]:
        """What the vector store keeps beside the text (scalars only, as Chroma wants)."""
        return {
            "source": self.source,
            "position": self.position,
            "start": self.start,
            "doc_hash": self.doc_hash,
            "content_hash": self.content_hash,
            "kind": self.kind,
            "heading": self.heading,
        }


def index_text(text: str, heading: str = "", source: str = "") -> str:
    """The text a chunk is indexed by: its heading path on the first line, then its text without
    markup (:func:`llmops.rag.markup.clean_text`: no badges, images, HTML or directives, links
    and emphasis unwrapped), read as the markup of its ``source`` file's type."""
    from llmops.rag.markup import clean_text, markup_kind

    clean = clean_text(text, markup_kind(source) if source else "auto")[0]
    return f"{heading}\n{clean}" if heading else clean


MAX_HEADING_CHARS = 200


def headings(text: str, kind: str) -> list[tuple[int, int, str]]:
    """(source offset, level, title) of each section title of ``text``, in order; ``kind`` is a
    :mod:`llmops.rag.markup` kind. The titles are the markup module's heading blocks; a Markdown
    ``#`` heading's level is its ``#`` count, an underlined one (Markdown setext, any
    reStructuredText adornment, with or without an overline) takes the next level after the
    adornment styles seen before it, as reStructuredText assigns them."""
    from llmops.rag.markup import HEADING, blocks

    lines = text.split("\n")
    line_starts = [0]
    for line in lines:
        line_starts.append(line_starts[-1] + len(line) + 1)
    styles: list[str] = []  # adornments in the order they first appear
    found = []
    for block in blocks(text, kind):
        if block.kind != HEADING or not block.text.strip():
            continue
        n = bisect_right(line_starts, block.start) - 1  # the title's line
        line = lines[n].lstrip()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
        else:
            under = lines[n + 1].strip()[:1] if n + 1 < len(lines) else ""
            over = n > 0 and lines[n - 1].strip() != "" and set(lines[n - 1].strip()) == {under}
            style = ("over" if over else "") + under
            if style not in styles:
                styles.append(style)
            level = styles.index(style) + 1
        found.append((line_starts[n], level, block.text.strip()[:MAX_HEADING_CHARS]))
    return found


def heading_paths(document: SourceDocument, starts: list[int]) -> list[str]:
    """The heading path at each offset of ``starts``: the file's name, then the titles of the
    sections that hold the offset (a title that starts at the offset included)."""
    from llmops.rag.markup import markup_kind

    name = PurePosixPath(document.path).stem
    marks = (
        headings(document.text, markup_kind(document.path)) if document.kind in ("markdown", "text") else []
    )
    paths = []
    for start in starts:
        stack: list[tuple[int, str]] = []
        for offset, level, title in marks:
            if offset > start:
                break
            stack = [(lvl, t) for lvl, t in stack if lvl < level] + [(level, title)]
        titles = [t for _, t in stack if t.lower() != name.lower()]
        paths.append(" > ".join([name, *titles]))
    return paths


def _splitter(document: SourceDocument, config: ChunkingConfig):
    from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

    common = {
        "chunk_size": config.size(document.kind),
        "chunk_overlap": config.chunk_overlap,
        "add_start_index": True,
    }
    if document.kind == "markdown":
        return RecursiveCharacterTextSplitter.from_language(Language.MARKDOWN, **common)
    return RecursiveCharacterTextSplitter(separators=["\n\n", "\n", ". ", " ", ""], **common)


def split_documents(documents: list[SourceDocument], config: ChunkingConfig) -> list[Chunk]:
    chunks = []
    for document in documents:
        pieces = _splitter(document, config).create_documents([document.text])
        starts = [int(piece.metadata.get("start_index", -1)) for piece in pieces]
        paths = heading_paths(document, starts) if config.heading_prefix else [""] * len(starts)
        for position, (piece, start, heading) in enumerate(zip(pieces, starts, paths, strict=True)):
            key = f"{document.path}\0{document.content_hash}\0{position}"
            indexed = index_text(piece.page_content, heading, document.path)
            chunk = Chunk(
                id=hashlib.sha256(key.encode()).hexdigest()[:32],
                text=piece.page_content,
                source=document.path,
                position=position,
                start=start,
                doc_hash=document.content_hash,
                content_hash=text_hash(indexed),
                kind=document.kind,
                heading=heading,
            )
            chunk._index_text = indexed
            chunks.append(chunk)
    return chunks
