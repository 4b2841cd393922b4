"""Load a corpus folder: Markdown, text, HTML and PDF files become text documents.

Paths stay inside the folder (a link that leads out of it is skipped), hidden files and folders
(a name that starts with ``.``, e.g. ``.git``, ``....md``) are not read, and a file that cannot be
read is skipped. Every file not indexed is listed in ``Corpus.skipped`` with the reason (a hidden
folder once, as ``name/``, not file by file); none of it stops the load. The corpus version is a
hash of every (path, content hash) pair.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from pydantic import BaseModel

from llmops.errors import LlmopsError

KINDS = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".rst": "text",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
MAX_FILE_BYTES = 50 * 1024 * 1024


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


def load_corpus(root: str | Path, field: str = "--docs") -> Corpus:
    """Every supported file under ``root`` (recursively), sorted by path."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise CorpusError(f"{field}: not a folder: {root}")
    base = base.resolve()
    documents, skipped = [], []
    for folder, dirs, files in os.walk(base):
        for name in (d for d in dirs if d.startswith(".")):
            relative = (Path(folder) / name).relative_to(base).as_posix()
            skipped.append(
                Skipped(path=relative + "/", reason="hidden folder (name starts with '.'): not read")
            )
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            relative = path.relative_to(base).as_posix()
            if name.startswith("."):
                skipped.append(Skipped(path=relative, reason="hidden file (name starts with '.')"))
                continue
            kind = KINDS.get(path.suffix.lower())
            if kind is None:
                skipped.append(
                    Skipped(path=relative, reason=f"unsupported file type {path.suffix or '(none)'}")
                )
                continue
            if not path.resolve().is_relative_to(base):
                skipped.append(Skipped(path=relative, reason="links outside the corpus folder"))
                continue
            try:
                if path.stat().st_size > MAX_FILE_BYTES:
                    raise ValueError(f"larger than {MAX_FILE_BYTES // 2**20} MiB")
                text = _normalize(_READERS[kind](path))
            except Exception as exc:  # any unreadable file is reported, never fatal
                skipped.append(Skipped(path=relative, reason=f"unreadable {kind}: {_reason(exc)}"))
                continue
            if not text.strip():
                skipped.append(Skipped(path=relative, reason="no text"))
                continue
            documents.append(
                SourceDocument(path=relative, kind=kind, text=text, content_hash=text_hash(text))
            )
    documents.sort(key=lambda d: d.path)
    skipped.sort(key=lambda s: s.path)
    return Corpus(root=str(base), documents=documents, skipped=skipped)


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None


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
        raise ValueError("encrypted PDF")
    return "\n\n".join(page.extract_text() or "" for page in reader.pages)


_READERS = {"markdown": _read_text, "text": _read_text, "html": _read_html, "pdf": _read_pdf}


def _normalize(text: str) -> str:
    # one newline convention, no trailing spaces, at most one blank line in a row
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
