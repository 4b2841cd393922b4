"""The grounded instruction dataset (built from docs/ and the golden set) and the faithfulness
measure the fine-tune gate and the RAG evaluation read."""

import json

import pytest

from llmops.llm.lm_eval import compare, faithfulness
from llmops.llm.sft_data import InstructionRecord, load_instructions
from llmops.rag.grounded_data import build_grounded_records
from tests.conftest import REPO

CONTEXT = (
    "[1] docs/gate.md\nA failed gate does not fail the step or the run: the run goes on to the promote step. "
    "With no champion, every regression rule passes."
)


@pytest.fixture(scope="module")
def built():
    return build_grounded_records(REPO / "docs", REPO / "evals" / "rag_golden.yaml")


def test_every_record_is_a_question_with_context_and_a_cited_supported_answer(built):
    from llmops.rag.evaluation import load_golden

    golden_questions = {item.question for item in load_golden(REPO / "evals" / "rag_golden.yaml").questions}
    assert len(built) >= 60
    assert sum(r["input"].rsplit("\n\nQuestion: ", 1)[1] in golden_questions for r in built) >= 20
    for record in built:
        InstructionRecord.model_validate(record)
        assert record["input"].startswith("Context:\n[1] docs/")
        cited = record["response"].rsplit("[", 1)[1].rstrip("]")
        assert cited.startswith("docs/") and cited.endswith(".md")
        assert f"] {cited}\n" in record["input"]  # the cited file is one of the contexts
    # answers taken from the docs are quotes of their context: fully supported
    from_docs = [r for r in built if "Question: What do the docs say" in r["input"]]
    assert from_docs and all(faithfulness(r["response"], r["input"]) == 1.0 for r in from_docs)


def test_the_build_is_reproducible_and_the_shipped_file_is_in_that_format(built):
    again = build_grounded_records(REPO / "docs", REPO / "evals" / "rag_golden.yaml")
    assert json.dumps(again) == json.dumps(built)
    shipped = load_instructions(REPO / "datasets" / "llmops_instructions.jsonl")
    assert all(r.input.startswith("Context:\n[1] ") for r in shipped)


def test_faithfulness_is_the_share_of_answer_sentences_the_context_supports():
    quoted = "A failed gate does not fail the step or the run. [docs/gate.md]"
    invented = "The gate deletes the champion model from the registry forever."
    assert faithfulness(quoted, CONTEXT) == 1.0
    assert faithfulness(invented, CONTEXT) == 0.0
    assert faithfulness(f"{quoted} {invented}", CONTEXT) == 0.5
    assert faithfulness("", CONTEXT) == 0.0 and faithfulness("[docs/gate.md]", CONTEXT) == 0.0


def test_compare_reports_the_faithfulness_gain_when_both_have_it():
    base = {"perplexity": 10.0, "rouge_l": 0.2, "exact_match": 0.0, "faithfulness": 0.25}
    tuned = {"perplexity": 5.0, "rouge_l": 0.5, "exact_match": 0.0, "faithfulness": 0.75}
    assert compare(tuned, base)["faithfulness_gain"] == 0.5
    assert "faithfulness_gain" not in compare({k: v for k, v in tuned.items() if k != "faithfulness"}, base)
