"""A starter golden set drafted from a docs folder (llmops.rag.golden_init, and `llmops rag golden
init`)."""

from llmops.rag.evaluation import (
    load_golden,
)
from tests.unit.rag_corpus import DOCS, TOOLS_CHUNK, squash


def test_golden_init_drafts_verbatim_questions_from_headings_and_term_lists(tmp_path):
    from llmops.cli import main
    from llmops.rag.golden_init import write_starter_golden

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "platform.md").write_text(
        TOOLS_CHUNK + "\n## Reviews\n\nEvery new service passes a security review first.\n"
    )
    (docs / "volcanoes.md").write_text(DOCS["volcanoes.md"])
    out = tmp_path / "golden.yaml"
    golden = write_starter_golden(docs, out, max_questions=20)
    assert load_golden(out) == golden
    questions = {item.question: item for item in golden.questions}
    assert "What is Feature Store?" in questions
    assert questions["What is Feature Store?"].reference_contexts == ["Feature Store: Feast, Tecton"]
    assert questions["What should I know about hazards?"].sources == ["volcanoes.md"]
    for item in golden.questions:  # every excerpt is verbatim in its file
        text = squash((docs / item.sources[0]).read_text())
        assert all(squash(c) in text for c in item.reference_contexts), item
    assert golden.questions[0].sources != golden.questions[1].sources  # files take turns
    assert main(["rag", "golden", "init", "--docs", str(docs), "--out", str(out)]) == 2  # no overwrite
    assert main(["rag", "golden", "init", "--docs", str(docs), "--out", str(out), "--force",
                 "--max-questions", "2"]) == 0  # fmt: skip
    assert len(load_golden(out).questions) == 2
