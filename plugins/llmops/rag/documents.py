"""Load a corpus folder: Markdown, text, HTML and PDF files become text documents.

Paths stay inside the folder (a link that leads out of it is skipped), hidden files and folders
(a name that starts with ``.``, e.g. ``.git``, ``....md``) are not read, and a file that cannot be
read is skipped: a link that loops or whose target is missing, a link to a folder (not followed),
a file larger than ``LLMOPS_MAX_DOC_BYTES`` (5 MiB), text that is not UTF-8 or holds NUL bytes
(binary content under a text name). Every file not indexed is listed in ``Corpus.skipped`` with the
reason (a folder once, as ``name/``, not file by file); none of it stops the load. The corpus
version is a hash of every (path, content hash) pair.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from pathlib import Path

from pydantic import BaseModel, Field

from llmops.errors import LlmopsError
from llmops.settings import settings_from_env

KINDS = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".rst": "text",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}


class CorpusSettings(BaseModel):
    """Limits of a corpus load, from ``LLMOPS_MAX_DOC_BYTES``."""

    # A larger file is skipped: one 50 MB Markdown file made 76,955 chunks and a 2 GB start step.
    max_doc_bytes: int = Field(5 * 2**20, gt=0)


class CorpusError(LlmopsError, ValueError):
    """A corpus folder that cannot be used; the message names the parameter."""


class SourceDocument(BaseModel):
    path: str  # relative to the corpus root, with forward slashes
    kind: str  # markdown | text | html | pdf
    text: str
    content_hash: str  # sha256 of the extracted text

    @property
    def n_chars(self) -> int:
        return len(self.text)


class Skipped(BaseModel):
    path: str
    reason: str


HIDDEN_FOLDER = "hidden folder (name starts with '.'): not read"


class Refused(CorpusError):
    """A file that is read but not indexed; the message is the whole reason."""


class Corpus(BaseModel):
    root: str
    documents: list[SourceDocument]
    skipped: list[Skipped]

    @property
    def version(self) -> str:
        pairs = sorted((d.path, d.content_hash) for d in self.documents)
        digest = hashlib.sha256(repr(pairs).encode()).hexdigest()[:12]
        return f"corpus-{digest}"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_corpus(root: str | Path, field: str = "--docs", max_doc_bytes: int | None = None) -> Corpus:
    """Every supported file under ``root`` (recursively), sorted by path; a file larger than
    ``max_doc_bytes`` (default: the ``LLMOPS_MAX_DOC_BYTES`` setting) is skipped."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise CorpusError(f"{field}: not a folder: {root}")
    base = base.resolve()
    limit = max_doc_bytes if max_doc_bytes is not None else settings_from_env(CorpusSettings).max_doc_bytes
    documents, skipped = [], []
    for folder, dirs, files in os.walk(base):
        for name in dirs:
            relative = (Path(folder) / name).relative_to(base).as_posix() + "/"
            if name.startswith("."):
                skipped.append(Skipped(path=relative, reason=HIDDEN_FOLDER))
            elif (Path(folder) / name).is_symlink():  # os.walk lists it but does not go in
                skipped.append(Skipped(path=relative, reason="link to a folder: not followed"))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            relative = path.relative_to(base).as_posix()
            loaded = _load_file(path, relative, base, limit)
            if isinstance(loaded, SourceDocument):
                documents.append(loaded)
            else:
                skipped.append(Skipped(path=relative, reason=loaded))
    documents.sort(key=lambda d: d.path)
    skipped.sort(key=lambda s: s.path)
    return Corpus(root=str(base), documents=documents, skipped=skipped)


def _load_file(path: Path, relative: str, base: Path, limit: int) -> SourceDocument | str:
    """The file as a document, or the reason it is not indexed."""
    if path.name.startswith("."):
        return "hidden file (name starts with '.')"
    broken = _broken_link(path) if path.is_symlink() else None
    if broken:
        return broken
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        return f"unsupported file type {path.suffix or '(none)'}"
    if not path.resolve().is_relative_to(base):
        return "links outside the corpus folder"
    try:
        size = path.stat().st_size
        if size > limit:
            return f"too large: {size:,} bytes, over LLMOPS_MAX_DOC_BYTES ({limit:,}): raise it to index"
        text = _normalize(_READERS[kind](path))
    except Refused as exc:
        return str(exc)
    except Exception as exc:  # any unreadable file is reported, never fatal
        return f"unreadable {kind}: {_reason(exc)}"
    if not text.strip():
        return "no text"
    return SourceDocument(path=relative, kind=kind, text=text, content_hash=text_hash(text))


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def _broken_link(path: Path) -> str | None:
    """Why the link ``path`` leads to no file: a loop, or a target that does not exist."""
    loop = f"link loop: {path.name} -> {os.readlink(path)} never reaches a file"
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop so
        return loop
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return loop
        if exc.errno == errno.ENOENT:
            return f"dangling link: its target {os.readlink(path)} does not exist"
        return f"unreadable link: {_reason(exc)}"
    return None


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CorpusError("not UTF-8 text") from None
    nul = text.find("\x00")
    if nul >= 0:  # valid UTF-8, but no text file holds one: a binary file with a text name
        raise Refused(f"binary content: a NUL character at offset {nul:,}")
    return text


def _read_html(path: Path) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_read_text(path), "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    return soup.get_text("\n")


def _read_pdf(path: Path) -> str:
    from pypdf import PdfReader

    reader = PdfReader(path)
    if reader.is_encrypted:
        raise CorpusError("encrypted PDF")
    return "\n\n".join(page.extract_text() or "" for page in reader.pages)


_READERS = {"markdown": _read_text, "text": _read_text, "html": _read_html, "pdf": _read_pdf}


def _normalize(text: str) -> str:
    # one newline convention, no trailing spaces, at most one blank line in a row
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
