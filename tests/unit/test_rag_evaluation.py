"""The evaluation helpers (llmops.rag.evaluation): relevance, hit rate and MRR, context coverage and
precision, answer keys, mean scores, and golden-set files (the shipped one quotes the shipped docs)."""

from pathlib import Path

import pytest

from llmops.rag.evaluation import (
    GoldenError,
    GoldenItem,
    GoldenSet,
    is_relevant,
    load_golden,
    mean_scores,
    retrieval_scores,
)
from tests.conftest import REPO
from tests.unit.rag_corpus import DOCS, squash

REFERENCE = "Sourdough bread rises with a starter of wild yeast"


def test_relevance_ignores_whitespace_and_case():
    chunk = "# Bread\n\nSOURDOUGH  bread\n rises with a Starter of wild\tyeast and lactic acid bacteria."
    assert is_relevant(chunk, [REFERENCE])
    assert is_relevant(chunk, ["Chess openings are memorized.", REFERENCE])
    assert not is_relevant("Tomato plants need at least six hours of direct sunlight.", [REFERENCE])
    assert not is_relevant(chunk, ["Castling early moves the king to safety."])


def golden(*contexts):
    return GoldenSet(
        questions=[
            GoldenItem(question=f"Question {i}?", reference="An answer.", reference_contexts=[context])
            for i, context in enumerate(contexts)
        ]
    )


def test_hit_rate_and_mrr_by_hand():
    a, b, c = DOCS["baking.md"], DOCS["chess.md"], DOCS["gardening.md"]
    other = DOCS["bicycles.md"]
    gold = golden(
        "Feed the starter with flour and water every day",
        "Castling early moves the king to safety",
        "a region of spacetime where gravity is so strong",
    )
    retrieved = [[a, b, c], [other, a, b], [a, b, c]]  # relevant at rank 1, at rank 3, nowhere
    rows = [{k: r[k] for k in ("hit_rate", "mrr")} for r in retrieval_scores(retrieved, gold)]
    assert rows == [
        {"hit_rate": 1.0, "mrr": 1.0},
        {"hit_rate": 1.0, "mrr": pytest.approx(1 / 3)},
        {"hit_rate": 0.0, "mrr": 0.0},
    ]
    means = mean_scores(rows)
    assert means == {"hit_rate": round(2 / 3, 4), "mrr": round((1 + 1 / 3) / 3, 4)}
    with pytest.raises(ValueError):
        retrieval_scores(retrieved[:2], gold)  # one list of chunks per question


def test_mean_scores_skip_unmeasured_values():
    rows = [
        {"hit_rate": 1.0, "rouge_l": 0.5, "faithfulness": None},
        {"hit_rate": 0.0, "rouge_l": None, "faithfulness": None},
        {"hit_rate": 1.0, "rouge_l": 0.2, "faithfulness": None, "not_a_metric": 9.0},
    ]
    means = mean_scores(rows)
    assert means == {"hit_rate": round(2 / 3, 4), "rouge_l": round(0.7 / 2, 4)}
    assert "faithfulness" not in means and "not_a_metric" not in means
    assert mean_scores([]) == {}


def test_golden_file_errors_name_the_entry(tmp_path):
    path = tmp_path / "golden.yaml"
    path.write_text("version: 1\nquestions:\n  - question: Why?\n    reference: Because.\n")
    with pytest.raises(GoldenError, match=r"--golden: .*questions\.0\.reference_contexts: Field required"):
        load_golden(path)
    path.write_text("questions:\n  - {question: Q, reference: R, reference_contexts: [], extra: 1}\n")
    with pytest.raises(GoldenError, match=r"questions\.0\.reference_contexts: .*questions\.0\.extra"):
        load_golden(path)
    with pytest.raises(GoldenError, match=r"--golden: no such file"):
        load_golden(tmp_path / "missing.yaml")
    path.write_text("questions: [unclosed\n")
    with pytest.raises(GoldenError, match=r"--golden: .*golden.yaml: not valid YAML"):
        load_golden(path)


def test_shipped_golden_set_quotes_the_shipped_docs():
    gold = load_golden(REPO / "evals" / "rag_golden.yaml")
    assert gold.content_version.startswith("golden-")
    assert len(gold.questions) >= 10
    for item in gold.questions:
        assert item.sources, f"{item.question!r} names no source"
        texts = []
        for source in item.sources:
            assert source.startswith("docs/"), source
            path = REPO / "docs" / Path(source).relative_to("docs")
            assert path.is_file(), f"{item.question!r}: {source} does not exist"
            texts.append(squash(path.read_text()))
        for context in item.reference_contexts:
            assert any(squash(context) in text for text in texts), (
                f"{item.question!r}: reference context not found verbatim in {item.sources}: {context!r}"
            )


def test_a_short_fragment_of_a_reference_is_not_relevant():
    from llmops.rag.evaluation import is_relevant

    reference = "The write step fills a scratch collection and renames it only when every chunk is in."
    assert not is_relevant("the write step", [reference])  # a heading-sized piece of it
    assert is_relevant("... fills a scratch collection and renames it only when every chunk", [reference])


def test_short_excerpts_give_coverage_and_precision():
    from llmops.rag.evaluation import retrieval_scores

    long_chunk = DOCS["volcanoes.md"] * 2  # ~1,100 characters around a one-line excerpt
    item = GoldenItem(
        question="What are pyroclastic flows?",
        reference="Fast avalanches of hot gas and ash.",
        reference_contexts=[
            "Pyroclastic flows are fast avalanches of hot gas and volcanic ash",
            "The Sicilian Defence answers the king's pawn opening with a pawn to c5.",
        ],
    )
    [row] = retrieval_scores(
        [[DOCS["baking.md"], long_chunk, DOCS["gardening.md"]]], GoldenSet(questions=[item])
    )
    assert row == {
        "hit_rate": 1.0,
        "mrr": 0.5,
        "reference_coverage": 0.5,  # one of the two excerpts is in some chunk
        "context_precision": pytest.approx(1 / 3),  # one of three chunks holds an excerpt
    }


def test_answer_key_score_reads_keys_or_quoted_references():
    from llmops.rag.evaluation import answer_key_score

    item = GoldenItem(question="Q?", reference="R.", reference_contexts=["Feature Store: Feast, Tecton"])
    assert answer_key_score("Feature Store: Feast, Tecton [2] Other. [1]", item) == 1.0
    assert answer_key_score("Orchestration: Airflow [1]", item) == 0.0
    keyed = item.model_copy(update={"keys": ["Feast", "tecton"]})
    assert answer_key_score("We use FEAST. [1]", keyed) == 0.5
