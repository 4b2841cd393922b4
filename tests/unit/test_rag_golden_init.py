"""A starter golden set drafted from a docs folder (llmops.rag.golden_init, and `llmops rag golden
init`)."""

import re
import shutil
from pathlib import Path

from llmops.rag.evaluation import load_golden
from tests.unit.rag_corpus import DOCS, TOOLS_CHUNK, squash

READMES = Path(__file__).resolve().parents[1] / "data" / "readmes"


def test_golden_init_drafts_verbatim_questions_from_headings_and_term_lists(tmp_path):
    from llmops.cli import main
    from llmops.rag.golden_init import write_starter_golden

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "platform.md").write_text(
        TOOLS_CHUNK
        + "\n## Installing the agent\n\nInstall the agent on every host with the package manager.\n"
    )
    (docs / "volcanoes.md").write_text(DOCS["volcanoes.md"])
    out = tmp_path / "golden.yaml"
    golden = write_starter_golden(docs, out, max_questions=20)
    assert load_golden(out) == golden
    questions = {item.question: item for item in golden.questions}
    assert questions["What does Feature Store do in Platform?"].reference_contexts == [
        "Feature Store: Feast, Tecton"
    ]
    assert questions["How do I install Platform?"].reference == (
        "Install the agent on every host with the package manager."
    )
    assert questions["What does Volcanoes say about hazards?"].sources == ["volcanoes.md"]
    for item in golden.questions:  # every excerpt is verbatim in its file
        text = squash((docs / item.sources[0]).read_text())
        assert all(squash(c) in text for c in item.reference_contexts), item
    assert golden.questions[0].sources != golden.questions[1].sources  # files take turns
    assert main(["rag", "golden", "init", "--docs", str(docs), "--out", str(out)]) == 2  # no overwrite
    assert main(["rag", "golden", "init", "--docs", str(docs), "--out", str(out), "--force",
                 "--max-questions", "2"]) == 0  # fmt: skip
    assert len(load_golden(out).questions) == 2


def test_golden_init_on_readmes_names_the_subject_reads_rst_and_never_quotes_markup(tmp_path):
    from llmops.rag import markup
    from llmops.rag.documents import load_corpus
    from llmops.rag.golden_init import questions_for, starter_golden, subject_of

    files = ("aiohttp.rst", "colorama.rst", "psutil.rst", "httpx.md", "transformers.md")
    for name in files:
        shutil.copy(READMES / name, tmp_path / name)
    subjects = {
        name: subject_of(name, markup.blocks((READMES / name).read_text(), markup.markup_kind(name)))
        for name in files
    }
    # a tagline or section title that does not name the file gives way to the stem
    assert subjects == {"aiohttp.rst": "aiohttp", "colorama.rst": "Colorama", "psutil.rst": "psutil",
                        "httpx.md": "httpx", "transformers.md": "transformers"}  # fmt: skip
    colorama = questions_for("colorama.rst", (READMES / "colorama.rst").read_text())
    assert "How do I install Colorama?" in [q.question for q in colorama]  # an underlined rST heading
    golden = starter_golden(load_corpus(tmp_path), max_questions=40)
    assert {item.sources[0] for item in golden.questions} == set(files)  # rST files too
    noise = re.compile(r"<[a-z/!]|!\[|\[!\[|^\.\. |\.\. \w+::|:target:|shields\.io|\|\w+\|", re.M)
    for item in golden.questions:
        assert subjects[item.sources[0]].lower() in item.question.lower(), item.question
        assert not item.question.startswith("What should I know"), item.question
        source = squash((tmp_path / item.sources[0]).read_text())
        for excerpt in item.reference_contexts:
            assert squash(excerpt) in source and not noise.search(excerpt), excerpt
    forms = [q.question.split()[0] + " " + q.question.split()[1] for q in golden.questions]
    assert {"How do", "Which features", "What does", "What is"} <= set(forms), forms
