"""Loading a corpus folder (Markdown, text, HTML, PDF; unreadable files reported, never fatal)
and splitting it into chunks that keep their source, position, offset and content hash."""

import hashlib
import os

import pytest
from pydantic import ValidationError

from llmops.errors import LlmopsError
from llmops.rag.chunking import ChunkingConfig, headings, index_text, split_documents
from llmops.rag.documents import CorpusError, load_corpus, text_hash

PDF_TEXT = "Some text here"


def write_pdf(path, text=PDF_TEXT):
    """A minimal valid one-page PDF (catalog, pages, page, Helvetica, one content stream) with a
    correct cross-reference table, so a PDF reader finds every object by its byte offset."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n" % (len(objects) + 1)
    out += b"0000000000 65535 f \n"
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path


HTML = """<html><head><title>Gate page</title>
<style>body { color: red; } .secret-style {}</style>
<script>var secretScript = "do not index";</script></head>
<body><h1>Promotion gate</h1><p>The gate compares the candidate with the champion.</p></body></html>
"""


@pytest.fixture
def corpus_dir(tmp_path):
    root = tmp_path / "docs"
    (root / "guides").mkdir(parents=True)
    (root / "intro.md").write_text("# Intro\n\nThe registry keeps every model version.\n")
    (root / "guides" / "notes.txt").write_text("Drift is measured per column.\r\nTrailing   \n")
    (root / "guides" / "gate.html").write_text(HTML)
    write_pdf(root / "manual.pdf")
    return root


def test_loads_markdown_text_html_and_pdf(corpus_dir):
    corpus = load_corpus(corpus_dir)
    docs = {d.path: d for d in corpus.documents}
    assert set(docs) == {"guides/gate.html", "guides/notes.txt", "intro.md", "manual.pdf"}
    assert {p: d.kind for p, d in docs.items()} == {
        "guides/gate.html": "html",
        "guides/notes.txt": "text",
        "intro.md": "markdown",
        "manual.pdf": "pdf",
    }
    assert corpus.skipped == []
    assert "registry keeps every model version" in docs["intro.md"].text
    # newlines normalized, trailing spaces gone
    assert "\r" not in docs["guides/notes.txt"].text
    assert docs["guides/notes.txt"].text.endswith("Trailing")
    html = docs["guides/gate.html"].text
    assert "Promotion gate" in html and "compares the candidate with the champion" in html
    for hidden in ("secretScript", "do not index", "secret-style", "color: red"):
        assert hidden not in html
    assert PDF_TEXT in docs["manual.pdf"].text
    for document in corpus.documents:
        assert document.content_hash == hashlib.sha256(document.text.encode()).hexdigest()
        assert document.n_chars == len(document.text)


def test_paths_are_relative_posix_and_sorted(corpus_dir):
    corpus = load_corpus(corpus_dir)
    paths = [d.path for d in corpus.documents]
    # sorted over the whole tree, not folder by folder (os.walk gives intro.md before guides/)
    assert paths == sorted(paths) and paths[0] == "guides/gate.html"
    for path in paths:
        assert not path.startswith("/") and "\\" not in path
        assert (corpus_dir / path).is_file()
    assert corpus.root == str(corpus_dir.resolve())


def test_unreadable_files_are_skipped_with_reasons(tmp_path):
    root = tmp_path / "docs"
    (root / ".git").mkdir(parents=True)
    (root / "good.md").write_text("# Good\n\nThis one loads fine.\n")
    (root / "latin1.txt").write_bytes(b"caf\xe9 \xff\xfe not utf-8")
    (root / "broken.pdf").write_bytes(os.urandom(512))
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    (root / "empty.md").write_text("  \n\n \t\n")
    outside = tmp_path / "outside.md"
    outside.write_text("# Outside\n\nSecret text from outside the corpus.\n")
    (root / "link.md").symlink_to(outside)
    (root / ".git" / "x.md").write_text("# Hidden\n\nNever loaded.\n")
    (root / ".hidden.md").write_text("# Hidden file\n\nNever loaded either.\n")

    corpus = load_corpus(root)

    assert [d.path for d in corpus.documents] == ["good.md"]
    assert [s.path for s in corpus.skipped] == sorted(s.path for s in corpus.skipped)
    reasons = {s.path: s.reason for s in corpus.skipped}
    assert set(reasons) == {
        "latin1.txt", "broken.pdf", "image.png", "empty.md", "link.md", ".git/", ".hidden.md"
    }  # fmt: skip
    assert "unreadable text" in reasons["latin1.txt"] and "UTF-8" in reasons["latin1.txt"]
    assert reasons["broken.pdf"].startswith("unreadable pdf")
    assert "unsupported file type .png" in reasons["image.png"]
    assert reasons["empty.md"] == "no text"
    assert "links outside" in reasons["link.md"]
    # hidden files and folders are not loaded, but named: a hidden folder once, not file by file
    assert reasons[".hidden.md"] == "hidden file (name starts with '.')"
    assert reasons[".git/"].startswith("hidden folder")


def test_dot_named_files_are_listed_among_skipped_with_a_reason(tmp_path):
    """Finding 6: names that look like path tricks were dropped without a word."""
    root = tmp_path / "docs"
    root.mkdir()
    (root / "good.md").write_text("# Good\n\nIndexed.\n")
    tricky = ["....md", "..\\..\\etc\\passwd.md", "..%2f..%2fetc%2fpasswd.md"]
    for name in tricky:
        (root / name).write_text("# Tricky\n\nNot indexed.\n")
    corpus = load_corpus(root)
    assert [d.path for d in corpus.documents] == ["good.md"]
    assert {s.path: s.reason for s in corpus.skipped} == {
        name: "hidden file (name starts with '.')" for name in tricky
    }
    # the count a flow reports covers every file that was not indexed
    assert len(corpus.documents) + len(corpus.skipped) == len(list(root.iterdir()))


def test_a_file_over_the_size_limit_is_skipped_naming_the_setting(tmp_path, monkeypatch):
    """A 50 MB Markdown file was indexed as 76,955 chunks: a file over LLMOPS_MAX_DOC_BYTES is skipped."""
    root = tmp_path / "docs"
    root.mkdir()
    (root / "small.md").write_text("# Small\n\n" + "word " * 100)
    (root / "exact.md").write_text("# Exact\n\n" + "x" * (1000 - 9))
    (root / "big.md").write_text("# Big\n\n" + "word " * 300)
    (root / "big.pdf").write_bytes(write_pdf(tmp_path / "manual.pdf").read_bytes() + b"%" * 1000)
    monkeypatch.setenv("LLMOPS_MAX_DOC_BYTES", "1000")

    corpus = load_corpus(root)

    assert [d.path for d in corpus.documents] == ["exact.md", "small.md"]
    reasons = {s.path: s.reason for s in corpus.skipped}
    assert set(reasons) == {"big.md", "big.pdf"}
    assert reasons["big.md"] == "too large: 1,507 bytes, over LLMOPS_MAX_DOC_BYTES (1,000): raise it to index"
    assert "LLMOPS_MAX_DOC_BYTES" in reasons["big.pdf"]
    # a limit given by the caller wins over the setting
    assert {d.path for d in load_corpus(root, max_doc_bytes=10_000).documents} == {
        "big.md", "big.pdf", "exact.md", "small.md"
    }  # fmt: skip


def test_the_size_limit_defaults_to_5_mib_and_a_bad_one_names_the_setting(tmp_path, monkeypatch):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "good.md").write_text("# Good\n\nIndexed.\n")
    (root / "huge.txt").write_bytes(b"a" * (5 * 2**20 + 1))
    monkeypatch.delenv("LLMOPS_MAX_DOC_BYTES", raising=False)
    corpus = load_corpus(root)
    assert [d.path for d in corpus.documents] == ["good.md"]
    assert corpus.skipped[0].reason.startswith(
        "too large: 5,242,881 bytes, over LLMOPS_MAX_DOC_BYTES (5,242,880)"
    )
    monkeypatch.setenv("LLMOPS_MAX_DOC_BYTES", "")  # empty counts as unset
    assert [d.path for d in load_corpus(root).documents] == ["good.md"]
    for bad in ("0", "-1", "5MB"):
        monkeypatch.setenv("LLMOPS_MAX_DOC_BYTES", bad)
        with pytest.raises(LlmopsError, match="LLMOPS_MAX_DOC_BYTES"):
            load_corpus(root)


def test_binary_content_under_a_text_name_is_skipped(tmp_path):
    """A .md file holding NUL bytes was indexed."""
    root = tmp_path / "docs"
    root.mkdir()
    (root / "good.md").write_text("# Good\n\nIndexed.\n")
    (root / "nul.md").write_bytes(b"# Looks like text\n\nThen\x00\x01\x02\x00 binary")
    (root / "nul.html").write_bytes(b"<html><body><p>Text\x00\x00</p></body></html>")
    (root / "elf.txt").write_bytes(b"\x7fELF\x02\x01\x01" + bytes(64))
    (root / "utf16.txt").write_text("Drift is measured per column.", encoding="utf-16")
    (root / "random.rst").write_bytes(os.urandom(4096))

    corpus = load_corpus(root)

    assert [d.path for d in corpus.documents] == ["good.md"]
    reasons = {s.path: s.reason for s in corpus.skipped}
    assert reasons["nul.md"] == "binary content: a NUL character at offset 23"
    assert reasons["nul.html"].startswith("binary content: a NUL character")
    assert reasons["elf.txt"].startswith("binary content: a NUL character")
    for not_utf8 in ("utf16.txt", "random.rst"):
        assert reasons[not_utf8].startswith("unreadable text") and "UTF-8" in reasons[not_utf8]


def test_link_loops_dangling_links_and_folder_links_say_so(tmp_path):
    """A link loop was reported as "unsupported file type (none)" (and one named .md stopped the load)."""
    root = tmp_path / "docs"
    (root / "guides").mkdir(parents=True)
    (root / "guides" / "gate.md").write_text("# Gate\n\nThe gate compares.\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.md").write_text("# Secret\n\nNot in the corpus.\n")
    (root / "loop").symlink_to("loop")
    (root / "loop.md").symlink_to("loop.md")
    (root / "a.md").symlink_to("b.md")
    (root / "b.md").symlink_to("a.md")
    (root / "dangling.md").symlink_to("missing.md")
    (root / "dangling").symlink_to(tmp_path / "gone")
    (root / "secret.md").symlink_to(tmp_path / "outside" / "secret.md")
    (root / "alias").symlink_to(root / "guides")
    (root / "here").symlink_to(".")
    (root / "away").symlink_to(tmp_path / "outside")

    corpus = load_corpus(root)

    assert [d.path for d in corpus.documents] == ["guides/gate.md"]
    reasons = {s.path: s.reason for s in corpus.skipped}
    assert reasons == {
        "loop": "link loop: loop -> loop never reaches a file",
        "loop.md": "link loop: loop.md -> loop.md never reaches a file",
        "a.md": "link loop: a.md -> b.md never reaches a file",
        "b.md": "link loop: b.md -> a.md never reaches a file",
        "dangling.md": "dangling link: its target missing.md does not exist",
        "dangling": f"dangling link: its target {tmp_path / 'gone'} does not exist",
        "secret.md": "links outside the corpus folder",
        "alias/": "link to a folder: not followed",
        "here/": "link to a folder: not followed",
        "away/": "link to a folder: not followed",
    }


def test_a_link_inside_the_folder_is_loaded(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "real.md").write_text("# Real\n\nLinked from inside the corpus.\n")
    (root / "alias.md").symlink_to(root / "real.md")
    corpus = load_corpus(root)
    assert [d.path for d in corpus.documents] == ["alias.md", "real.md"]
    assert corpus.skipped == []


def test_root_that_is_not_a_folder_names_docs(tmp_path):
    with pytest.raises(CorpusError, match="--docs: not a folder"):
        load_corpus(tmp_path / "missing")
    file = tmp_path / "file.md"
    file.write_text("# Not a folder\n")
    with pytest.raises(CorpusError, match="--docs: not a folder"):
        load_corpus(file)
    with pytest.raises(CorpusError, match="--corpus: not a folder"):
        load_corpus(file, field="--corpus")


def test_corpus_version_follows_content(corpus_dir, tmp_path):
    first = load_corpus(corpus_dir).version
    assert first.startswith("corpus-")
    assert load_corpus(corpus_dir).version == first
    # the same files elsewhere: the version depends on relative paths and content, not the root
    copy = tmp_path / "copy"
    copy.mkdir()
    for document in load_corpus(corpus_dir).documents:
        source = corpus_dir / document.path
        (copy / document.path).parent.mkdir(parents=True, exist_ok=True)
        (copy / document.path).write_bytes(source.read_bytes())
    assert load_corpus(copy).version == first
    (corpus_dir / "intro.md").write_text("# Intro\n\nThe registry keeps every model version forever.\n")
    changed = load_corpus(corpus_dir).version
    assert changed != first
    (corpus_dir / "intro.md").write_text("# Intro\n\nThe registry keeps every model version.\n")
    assert load_corpus(corpus_dir).version == first


# --- chunking -------------------------------------------------------------------------------


def _paragraphs(topic, n):
    return "\n\n".join(
        f"Paragraph {i} about {topic}. " + " ".join(f"{topic}-word{j}" for j in range(i % 7 + 8)) + "."
        for i in range(n)
    )


@pytest.fixture
def long_corpus(tmp_path):
    root = tmp_path / "long"
    root.mkdir()
    (root / "alpha.md").write_text(
        "# Alpha\n\n" + _paragraphs("alpha", 12) + "\n\n## More\n\n" + _paragraphs("beta", 6)
    )
    (root / "gamma.txt").write_text(_paragraphs("gamma", 15))
    (root / "delta.md").write_text("# Delta\n\n" + _paragraphs("delta", 10))
    return root


def test_overlap_must_be_smaller_than_size():
    with pytest.raises(ValidationError, match="chunk_overlap"):
        ChunkingConfig(chunk_size=200, chunk_overlap=200)
    with pytest.raises(ValidationError, match="chunk_overlap"):
        ChunkingConfig(chunk_size=200, chunk_overlap=300)
    with pytest.raises(ValidationError, match="chunk_size"):
        ChunkingConfig(chunk_size=10, chunk_overlap=0)
    with pytest.raises(ValidationError, match="chunk_sizes"):
        ChunkingConfig(chunk_sizes=100)
    assert ChunkingConfig(chunk_size=200, chunk_overlap=199).chunk_overlap == 199


def test_config_key_follows_the_settings():
    assert ChunkingConfig().key() == ChunkingConfig(chunk_size=800, chunk_overlap=120).key()
    assert ChunkingConfig(chunk_size=400).key() != ChunkingConfig().key()
    assert ChunkingConfig(chunk_overlap=0).key() != ChunkingConfig().key()


def test_chunks_point_back_into_their_documents(long_corpus):
    config = ChunkingConfig(chunk_size=200, chunk_overlap=40)
    documents = load_corpus(long_corpus).documents
    chunks = split_documents(documents, config)
    by_path = {d.path: d for d in documents}

    assert len({c.id for c in chunks}) == len(chunks)
    assert {c.source for c in chunks} == set(by_path)
    for path, document in by_path.items():
        own = [c for c in chunks if c.source == path]
        assert len(own) > 1  # every document is longer than one chunk
        assert [c.position for c in own] == list(range(len(own)))
        starts = [c.start for c in own]
        assert starts == sorted(starts) and starts[0] >= 0
        for chunk in own:
            assert document.text[chunk.start : chunk.start + len(chunk.text)] == chunk.text
            assert chunk.doc_hash == document.content_hash
            assert chunk.kind == document.kind
    for chunk in chunks:
        assert 0 < len(chunk.text) <= config.chunk_size
        # the key for reusing embeddings: the hash of what is embedded
        assert chunk.heading == ""  # no heading path unless asked for
        assert chunk.content_hash == text_hash(chunk.index_text)
        assert chunk.content_hash == hashlib.sha256(chunk.index_text.encode("utf-8")).hexdigest()
        meta = chunk.metadata()
        assert meta["source"] == chunk.source and meta["position"] == chunk.position
        assert meta["content_hash"] == chunk.content_hash
        assert all(isinstance(v, (str, int)) for v in meta.values())


def test_only_changed_documents_get_new_chunks(long_corpus):
    config = ChunkingConfig(chunk_size=200, chunk_overlap=40)
    before = split_documents(load_corpus(long_corpus).documents, config)
    again = split_documents(load_corpus(long_corpus).documents, config)
    assert [(c.id, c.content_hash) for c in again] == [(c.id, c.content_hash) for c in before]

    gamma = long_corpus / "gamma.txt"
    gamma.write_text(gamma.read_text().replace("Paragraph 3 about gamma", "Paragraph 3 about GAMMA"))
    after = split_documents(load_corpus(long_corpus).documents, config)

    def ids(chunks, source):
        return [c.id for c in chunks if c.source == source]

    def hashes(chunks, source):
        return [c.content_hash for c in chunks if c.source == source]

    for unchanged in ("alpha.md", "delta.md"):
        assert ids(after, unchanged) == ids(before, unchanged)
        assert hashes(after, unchanged) == hashes(before, unchanged)
    assert not set(ids(after, "gamma.txt")) & set(ids(before, "gamma.txt"))
    assert hashes(after, "gamma.txt") != hashes(before, "gamma.txt")
    # chunks of the changed document away from the edit keep their content hash (reusable)
    assert set(hashes(after, "gamma.txt")) & set(hashes(before, "gamma.txt"))


def test_smaller_chunks_give_more_of_them(long_corpus):
    documents = load_corpus(long_corpus).documents
    small = split_documents(documents, ChunkingConfig(chunk_size=150, chunk_overlap=0))
    large = split_documents(documents, ChunkingConfig(chunk_size=1000, chunk_overlap=0))
    assert len(small) > len(large) >= len(documents)
    assert max(len(c.text) for c in small) <= 150


README_MD = """# Quux

[![build](https://img.shields.io/badge/build-passing-green.svg)](https://ci.example.org)

A quux library.

## Installation

Run `pip install quux` to install it.

## Usage

### Command line

Call **quux** from a shell, see [the guide](https://quux.example.org/guide).
"""
README_RST = """=====
Blorp
=====

Blorp parses things.

Installing
----------

.. image:: https://img.shields.io/pypi/v/blorp.svg

Use pip to install blorp.

Details
~~~~~~~

Nothing more.

Contributing
------------

Send patches.
"""


def test_chunks_are_indexed_with_their_heading_path_and_without_markup(tmp_path):
    (tmp_path / "quux.md").write_text(README_MD)
    (tmp_path / "blorp.rst").write_text(README_RST)
    documents = {d.path: d for d in load_corpus(tmp_path).documents}
    config = ChunkingConfig(chunk_size=100, chunk_overlap=0, heading_prefix=True)
    chunks = split_documents(list(documents.values()), config)
    assert config.key() != ChunkingConfig(chunk_size=100, chunk_overlap=0).key()

    def chunk_with(words):
        return next(c for c in chunks if words in c.text)

    # the file's name, then the titles above the chunk's start (a title equal to the name once)
    assert chunk_with("pip install quux").heading == "quux > Installation"
    assert chunk_with("Call **quux**").heading == "quux > Usage > Command line"
    assert chunk_with("Use pip to install blorp.").heading == "blorp > Installing"
    assert chunk_with("Nothing more.").heading == "blorp > Installing > Details"
    # reStructuredText levels follow the adornments in the order they first appear
    levels = [(level, title) for _, level, title in headings(README_RST, "rst")]
    assert levels == [(1, "Blorp"), (2, "Installing"), (3, "Details"), (2, "Contributing")]
    # what is stored and shown is the source text at its offset; the embedder reads the heading
    # path and the text without markup
    for chunk in chunks:
        assert documents[chunk.source].text[chunk.start : chunk.start + len(chunk.text)] == chunk.text
        assert chunk.metadata()["heading"] == chunk.heading
        assert chunk.index_text.split("\n", 1)[0] == chunk.heading
    assert chunk_with("Call **quux**").index_text == (
        "quux > Usage > Command line\nCommand line\nCall quux from a shell, see the guide."
    )
    assert chunk_with("img.shields.io/badge").index_text == "quux\nQuux"  # the badge is noise
    plain = split_documents(list(documents.values()), ChunkingConfig(chunk_size=100, chunk_overlap=0))
    assert {c.heading for c in plain} == {""}
    assert (
        next(c for c in plain if "Call **quux**" in c.text).index_text
        == "Command line\nCall quux from a shell, see the guide."
    )
    assert "image::" not in chunk_with("Use pip to install blorp.").index_text
    assert index_text("plain words") == "plain words"


def test_the_chunk_size_can_differ_by_document_kind(long_corpus):
    documents = load_corpus(long_corpus).documents
    config = ChunkingConfig(chunk_size=200, chunk_overlap=0, kind_sizes={"text": 900})
    chunks = split_documents(documents, config)
    text = [c for c in chunks if c.kind == "text"]
    markdown = [c for c in chunks if c.kind == "markdown"]
    assert max(len(c.text) for c in markdown) <= 200 < max(len(c.text) for c in text) <= 900
    assert config.size("text") == 900 and config.size("markdown") == 200
    assert config.key() != ChunkingConfig(chunk_size=200, chunk_overlap=0).key()
    with pytest.raises(ValidationError, match="kind_sizes: unknown kind 'rst'"):
        ChunkingConfig(kind_sizes={"rst": 900})
    with pytest.raises(ValidationError, match=r"must be smaller than kind_sizes.text \(100\)"):
        ChunkingConfig(chunk_overlap=120, kind_sizes={"text": 100})
