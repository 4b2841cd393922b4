"""The generators (llmops.rag.generators): specs and their errors, and the extractive generator's
choice of a sentence or list line and its cache of sentence embeddings."""

import pytest

from llmops.rag.generators import GeneratorError, make_generator
from tests.unit.rag_corpus import TOOLS_CHUNK


def test_generator_specs(embedder):
    settings = make_generator("extractive", embedder).settings
    assert settings == {"backend": "extractive", "max_sentences": 2, "scorer": "terms-form-rank-v2"}
    with pytest.raises(GeneratorError, match=r"--generator: 'bogus' is not a generator"):
        make_generator("bogus", embedder)
    with pytest.raises(GeneratorError, match=r"--generator: the extractive generator needs"):
        make_generator("extractive")
    with pytest.raises(GeneratorError, match=r"--llm: 'extractive:x' is not a generator"):
        make_generator("extractive:x", embedder, field="--llm")


def test_extractive_answer_picks_the_list_line_a_which_question_wants(embedder):
    from llmops.rag.generators import ExtractiveGenerator, GenerationRequest

    generator = ExtractiveGenerator(embedder, max_sentences=1)
    other = "Feature stores keep features consistent between training and serving across teams."
    request = GenerationRequest(
        messages=[], question="Which tools serve as the feature store?", contexts=[TOOLS_CHUNK, other]
    )
    assert generator.generate(request) == "Feature Store: Feast, Tecton [1]"
    number = GenerationRequest(
        messages=[], question="How often does the architecture review meet?", contexts=[TOOLS_CHUNK]
    )
    assert generator.generate(number).startswith("Requests for new services go through the architecture")


def test_extractive_answers_embed_each_sentence_once_and_match_uncached_ones(embedder):
    from llmops.rag.generators import ExtractiveGenerator, GenerationRequest

    class Counting:
        def __init__(self):
            self.texts = []

        def embed(self, texts):
            self.texts += texts
            return embedder.embed(texts)

    counting = Counting()
    cached, small = ExtractiveGenerator(counting), ExtractiveGenerator(embedder, cache_size=3)
    questions = ["Which tools serve as the feature store?", "How often does the architecture review meet?"]
    for question in questions:
        request = GenerationRequest(messages=[], question=question, contexts=[TOOLS_CHUNK, TOOLS_CHUNK])
        uncached = ExtractiveGenerator(embedder).generate(request)
        assert cached.generate(request) == small.generate(request) == uncached
    units = 4  # the chunk's two sentences and two list lines, in both contexts: embedded once
    assert len(counting.texts) == len(set(counting.texts)) == len(questions) + units
    assert len(small._vectors) == 3  # the most recently used, up to cache_size
