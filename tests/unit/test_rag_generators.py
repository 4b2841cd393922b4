"""The generators (llmops.rag.generators): specs and their errors, and the extractive generator's
choice of a sentence or list line on real documents (wrapped lines, markup, list intros) and its
cache of sentence embeddings."""

import pytest

from llmops.rag.generators import GeneratorError, make_generator
from tests.unit.rag_corpus import TOOLS_CHUNK


def test_generator_specs(embedder):
    settings = make_generator("extractive", embedder).settings
    assert settings == {"backend": "extractive", "max_sentences": 2, "scorer": "terms-form-rank-v3"}
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


README = """[![PyPI](https://img.shields.io/pypi/v/widget.svg)](https://pypi.org/project/widget)
<img src="https://example.org/widget-logo.png" alt="Widget retries requests and reports timeouts">

Widget retries failed requests. The number of retries can be controlled during testing by setting the
`WIDGET_RETRIES` variable to zero.

The following extras are optional:

- `socks` - SOCKS proxy support for the client.
- `brotli` - decoding of brotli compressed responses.

To install the command line client:

```shell
pip install 'widget[cli]'
```
"""


def test_extractive_answer_on_a_readme_quotes_whole_sentences_never_markup(embedder):
    from llmops.rag.generators import ExtractiveGenerator, GenerationRequest, answer_units

    units = [u.text for u in answer_units(README)]
    assert not any("<img" in u or "shields.io" in u or "[![" in u for u in units)
    generator = ExtractiveGenerator(embedder, max_sentences=1)
    wrapped = generator.generate(
        GenerationRequest(
            messages=[], question="How are retries controlled during testing?", contexts=[README]
        )
    )
    assert wrapped == (
        "The number of retries can be controlled during testing by setting the `WIDGET_RETRIES` "
        "variable to zero. [1]"
    )  # the sentence goes on past the source line break
    logo = generator.generate(
        GenerationRequest(messages=[], question="What does the widget logo show?", contexts=[README])
    )
    assert "<img" not in logo and "png" not in logo


def test_extractive_answer_prefers_the_list_item_to_the_list_intro(embedder):
    from llmops.rag.generators import (
        COMMAND,
        INTRO,
        ITEM,
        SENTENCE,
        ExtractiveGenerator,
        GenerationRequest,
        answer_units,
    )

    kinds = {u.text: u.kind for u in answer_units(README)}
    assert kinds["The following extras are optional:"] == INTRO
    assert kinds["`socks` - SOCKS proxy support for the client."] == ITEM
    generator = ExtractiveGenerator(embedder, max_sentences=1)
    items = ("`socks` - SOCKS proxy support", "`brotli` - decoding of brotli")
    answer = generator.generate(
        GenerationRequest(messages=[], question="Which extras are optional?", contexts=[README])
    )
    assert answer.startswith(items), answer  # an item, though the intro repeats the question
    socks = generator.generate(
        GenerationRequest(messages=[], question="What are the optional extras for SOCKS?", contexts=[README])
    )
    assert socks.startswith(items[0]), socks
    how = generator.generate(
        GenerationRequest(
            messages=[], question="How do I install the command line client?", contexts=[README]
        )
    )
    assert how.startswith("pip install 'widget[cli]' [1]")  # a short command answers "how do I"
    inside = "--num-workers 4 is the default\n```\n\nThe service answers on port 3000 unless told otherwise."
    assert [(u.text, u.kind) for u in answer_units(inside)] == [
        ("--num-workers 4 is the default", COMMAND),  # the chunk starts inside a code block
        ("The service answers on port 3000 unless told otherwise.", SENTENCE),
    ]
