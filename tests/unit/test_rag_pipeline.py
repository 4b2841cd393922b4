"""The RAG pipeline (llmops.rag.pipeline): an answer from the retrieved chunks with its sources and
versions, retrieved text kept as data in the prompt, and a prompt over the generator's context
answered from the best ranked chunks that fit."""

import re

import pytest

from llmops.prompts import load_prompt
from llmops.rag.generators import make_generator, split_sentences
from llmops.rag.pipeline import RagPipeline
from llmops.rag.retriever import Hit
from tests.llm_endpoint import Behaviour, chat_endpoint
from tests.unit.rag_corpus import HOSTILE, QUESTIONS


def test_extractive_answer_quotes_the_top_chunk(pipeline, retriever, embedder):
    question = QUESTIONS["bicycles.md"]
    answer = pipeline.answer(question, k=3)
    top = retriever.retrieve(question, k=3)[0]
    assert answer.sources[0].path == "bicycles.md" and answer.sources[0].text == top.text
    assert [s.number for s in answer.sources] == [1, 2, 3]
    assert any(f"{sentence} [1]" in answer.answer for sentence in split_sentences(top.text))
    assert re.search(r"\[\d\]$", answer.answer)
    assert answer.versions == {
        "index_version": retriever.index_version,
        "embedding_model": embedder.model_id,
        "retrieval": "dense",
        "prompt": f"rag_answer@{pipeline.prompt.version}",
    }


def test_no_hits_means_no_answer(pipeline):
    answer = pipeline.answer_from("What is a volcano?", [])
    assert answer.answer.startswith("I do not know") and answer.sources == []


def test_retrieved_text_is_kept_as_data(pipeline, retriever):
    question = "What does the lighthouse keeper log?"
    hits = retriever.retrieve(question, k=2, filters={"source": "lighthouse.md"})
    assert any(HOSTILE in h.text for h in hits)
    request = pipeline.request(question, hits)
    system, user = request.messages
    assert system["role"] == "system" and user["role"] == "user"
    assert HOSTILE in user["content"]
    assert user["content"].endswith(f"Question: {question}")
    assert user["content"].count(question) == 1  # the {question} inside the document was not expanded
    assert "<class" not in user["content"]
    assert request.contexts == [h.text for h in hits]
    assert request.max_tokens == pipeline.prompt.parameters["max_tokens"]
    answer = pipeline.answer_from(question, hits)
    assert answer.answer and answer.sources[0].path == "lighthouse.md"


def test_pipeline_needs_a_context_variable(tmp_path, retriever, embedder):
    path = tmp_path / "no_context.yaml"
    path.write_text(
        "name: no_context\n"
        "input_variables: [question]\n"
        "messages:\n"
        "  - {role: user, content: 'Answer: {question}'}\n"
    )
    prompt = load_prompt(str(path))
    with pytest.raises(ValueError, match=r"'no_context': a RAG prompt needs the variables \['context'\]"):
        RagPipeline(retriever, prompt, make_generator("extractive", embedder))


LONG_HITS = [
    Hit(id=f"h{i}", text=f"Passage {i}: " + "the gate compares every candidate with the champion. " * 8,
        source=f"docs/{i}.md", position=i, score=1 - i / 10)
    for i in range(6)
]  # fmt: skip


def test_an_endpoint_that_refuses_a_long_prompt_is_asked_again_with_fewer_contexts(retriever):
    from llmops.rag.generators import GeneratorContextExceeded, GeneratorFailed

    question = "What does the gate compare?"
    llm = Behaviour(status=200, message="It compares candidates [1].")
    with chat_endpoint(llm) as url:
        pipeline = RagPipeline(retriever, load_prompt("rag_answer"), make_generator(f"openai:{url}#m"))
        three = pipeline.request(question, LONG_HITS[:3]).messages
        llm.max_prompt_chars = sum(len(m["content"]) for m in three)  # three contexts fit, four do not
        answer = pipeline.answer_from(question, LONG_HITS)
        assert answer.answer == "It compares candidates [1]."
        assert [(s.number, s.path) for s in answer.sources] == [(n, f"docs/{n - 1}.md") for n in (1, 2, 3)]
        assert len(llm.calls) == 4  # six, five and four contexts refused; three answered
        assert llm.prompt_chars == sorted(llm.prompt_chars, reverse=True)

        llm.calls.clear()
        llm.max_prompt_chars = 10  # not even one context fits: the endpoint's refusal, as it said it
        with pytest.raises(GeneratorContextExceeded, match=rf"{url} answered 400: .*maximum context length"):
            pipeline.answer_from(question, LONG_HITS[:2])
        assert len(llm.calls) == 2

        llm.calls.clear()
        llm.max_prompt_chars, llm.status, llm.message = None, 400, "model 'm' does not exist"
        with pytest.raises(GeneratorFailed, match="does not exist") as refused:
            pipeline.answer_from(question, LONG_HITS)
        assert not isinstance(refused.value, GeneratorContextExceeded) and len(llm.calls) == 1


def test_a_local_model_is_given_as_many_contexts_as_its_context_holds(retriever, tmp_path):
    from llmops.llm.tiny import build_tiny_causal_lm
    from llmops.rag.generators import TransformersGenerator

    generator = TransformersGenerator(str(build_tiny_causal_lm(tmp_path / "tiny", n_positions=1024)))
    pipeline = RagPipeline(retriever, load_prompt("rag_answer"), generator)
    question = "What does the gate compare?"
    answer = pipeline.answer_from(question, LONG_HITS)
    kept = len(answer.sources)
    assert 1 <= kept < len(LONG_HITS) and [s.path for s in answer.sources] == [
        h.source for h in LONG_HITS[:kept]
    ]
    assert generator.fits(pipeline.request(question, LONG_HITS[:kept]))
    assert not generator.fits(pipeline.request(question, LONG_HITS[: kept + 1]))


def test_batched_answers_equal_answers_one_at_a_time_on_a_local_model(retriever, tmp_path):
    from llmops.llm.tiny import build_tiny_causal_lm
    from llmops.rag.generators import TransformersGenerator

    # a tiny Llama (SmolLM2's architecture): its greedy answers differ from question to question
    folder = build_tiny_causal_lm(tmp_path / "tiny", vocab_size=300, n_positions=1024, architecture="llama")
    generator = TransformersGenerator(str(folder))
    pipeline = RagPipeline(retriever, load_prompt("rag_answer"), generator)
    questions = ["What does the gate compare?", "What is a volcano?", "Who moves the champion?",
                 "How are chunks numbered?", "What is drift?", "Nothing retrieved?"]  # fmt: skip
    hits = [LONG_HITS, LONG_HITS[:1], LONG_HITS[2:4], LONG_HITS[:2], LONG_HITS[3:], []]
    alone = [pipeline.answer_from(q, h) for q, h in zip(questions, hits, strict=True)]
    seen = []
    batched = pipeline.answer_many(
        questions, hits, batch_size=4, progress=lambda n, total: seen.append((n, total))
    )
    assert [a.model_dump() for a in batched] == [a.model_dump() for a in alone]
    assert len({a.answer for a in alone}) > 2  # the comparison is not between empty answers
    assert len(alone[0].sources) < len(LONG_HITS)  # the first prompt was fitted into the context
    assert seen == [(4, 6), (6, 6)]


def test_a_batch_an_endpoint_refuses_as_too_long_is_answered_one_question_at_a_time(retriever):
    question = "What does the gate compare?"
    llm = Behaviour(status=200, message="It compares candidates [1].")
    with chat_endpoint(llm) as url:
        pipeline = RagPipeline(retriever, load_prompt("rag_answer"), make_generator(f"openai:{url}#m"))
        three = pipeline.request(question, LONG_HITS[:3]).messages
        llm.max_prompt_chars = sum(len(m["content"]) for m in three)
        answers = pipeline.answer_many([question, question], [LONG_HITS, LONG_HITS[:2]])
        assert [len(a.sources) for a in answers] == [3, 2]
        assert {a.answer for a in answers} == {"It compares candidates [1]."}
