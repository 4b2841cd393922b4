"""The OpenAI-compatible LLM service for real (transformers backend, a tiny local model), spoken
to by the official `openai` client and LangChain's ChatOpenAI; and the RAG pieces that use any
OpenAI-compatible endpoint (the `openai:` generator, the ragas judge) pointed at it."""

import uuid

import httpx
import openai
import pytest

from llmops.llm.generators import make_generator
from llmops.llm.tiny import build_tiny_causal_lm
from tests.conftest import serve_bento

pytestmark = [pytest.mark.slow, pytest.mark.integration]
API_KEY = "llm-key-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("models") / "tiny-gpt2")


@pytest.fixture(scope="module")
def llm(tiny_model, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("llm-log")
    env = {
        "LLMOPS_LLM_MODEL": str(tiny_model),
        "LLMOPS_LLM_MAX_TOKENS": "64",
        "LLMOPS_LLM_BACKEND": "transformers",
    }
    with serve_bento("services.llm:LLM", log_dir, **env) as client:
        yield client


@pytest.fixture
def client(llm):
    return openai.OpenAI(base_url=f"{llm.base_url}/v1", api_key="unused", max_retries=0)


def test_models_and_info(llm, tiny_model):
    models = llm.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["llm"] and models["data"][0]["max_model_len"] == 512
    info = llm.post("/info", json={}).json()
    assert info["backend"] == "transformers" and info["path"] == str(tiny_model)


def test_openai_client_chat_completion_with_usage(client):
    reply = client.chat.completions.create(
        model="llm", messages=[{"role": "user", "content": "Say something"}], max_tokens=12, temperature=0.8,
        seed=3,
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert reply.usage.completion_tokens <= 12 and reply.usage.prompt_tokens > 3
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert choice.finish_reason in ("stop", "length")


def test_openai_client_streaming_matches_the_final_usage(client):
    stream = client.chat.completions.create(
        model="llm", messages=[{"role": "user", "content": "Stream please"}], max_tokens=10, temperature=0.8,
        seed=5, stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = chunks[-1].usage
    assert len(chunks) >= 3 and finishes in (["length"], ["stop"])
    assert usage is not None and 0 < usage.completion_tokens <= 10
    assert isinstance(text, str)


def test_text_completions(client):
    reply = client.completions.create(model="llm", prompt="The registry keeps", max_tokens=6)
    assert reply.object == "text_completion" and reply.usage.completion_tokens <= 6


def test_langchain_chat_openai(llm):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        base_url=f"{llm.base_url}/v1", api_key="unused", model="llm", max_tokens=8, temperature=0
    )
    message = chat.invoke("Hello there")
    assert isinstance(message.content, str)
    assert message.usage_metadata["output_tokens"] <= 8


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"max_tokens": 1000}, 400, "max_tokens"),
        ({"temperature": 3}, 400, "temperature"),
        ({"model": "gpt-4"}, 404, "model"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "word " * 600}], "max_tokens": 8}, 400, "messages"),
    ],
)
def test_bad_requests_are_4xx_naming_the_field(llm, body, status, param):
    payload = {"model": "llm", "messages": [{"role": "user", "content": "hi"}], **body}
    reply = llm.post("/v1/chat/completions", json=payload)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["param"] == param


def test_context_length_error_says_what_to_do(llm):
    reply = llm.post("/v1/completions", json={"model": "llm", "prompt": "word " * 600, "max_tokens": 8})
    error = reply.json()["error"]
    assert reply.status_code == 400 and error["code"] == "context_length_exceeded"
    assert "context is 512 tokens" in error["message"]


def test_rag_openai_generator_uses_the_service(llm):
    from llmops.llm.generators import GenerationRequest

    generator = make_generator(f"openai:{llm.base_url}/v1#llm")
    assert generator.settings == {"backend": "openai", "base_url": f"{llm.base_url}/v1", "model": "llm"}
    request = GenerationRequest(messages=[{"role": "user", "content": "Q?"}], question="Q?", contexts=["c"],
                                max_tokens=5, temperature=0.5)  # fmt: skip
    assert isinstance(generator.generate(request), str)
    found = make_generator(f"openai:{llm.base_url}/v1")  # no model: the server's first one
    assert found.model == "llm"


def test_api_key(tiny_model, tmp_path):
    with serve_bento("services.llm:LLM", tmp_path, LLMOPS_LLM_MODEL=str(tiny_model),
                     LLMOPS_API_KEY=API_KEY) as server:  # fmt: skip
        assert server.get("/v1/models").status_code == 401
        keyed = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0)
        assert keyed.models.list().data[0].id == "llm"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="wrong", max_retries=0).models.list()
        assert httpx.get(f"{server.base_url}/readyz").status_code == 200


def test_ragas_judge_calls_the_endpoint_and_records_what_it_could_not_score(llm):
    from llmops.rag.embeddings import Embedder
    from llmops.rag.evaluation import GoldenSet, Judge, ragas_scores
    from llmops.rag.pipeline import RagAnswer, Source

    golden = GoldenSet.model_validate(
        {"questions": [{"question": "What moves the alias?", "reference": "promote moves it.",
                        "reference_contexts": ["promote moves the champion alias"]}]}
    )  # fmt: skip
    answer = RagAnswer(
        answer="promote moves the champion alias",
        sources=[
            Source(number=1, path="registry.md", chunk=0, score=0.9, text="promote moves the champion alias")
        ],
        versions={},
    )
    judge = Judge(url=f"{llm.base_url}/v1", model="llm", embedding_model_path=str(Embedder().path))
    rows, notes = ragas_scores(golden, [answer], judge)
    # a tiny random model cannot write the judge's structured answers: each judged metric is left
    # unscored (None) with the reason, and the non-LLM metrics are there as always
    assert rows[0]["ragas_context_recall"] == 1.0
    for metric in ("faithfulness", "answer_relevancy"):
        assert rows[0][metric] is None or 0 <= rows[0][metric] <= 1
        if rows[0][metric] is None:
            assert any(note.startswith(f"{metric} not scored") for note in notes)
