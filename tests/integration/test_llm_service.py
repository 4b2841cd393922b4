"""The OpenAI-compatible LLM service for real (transformers backend, a tiny local model), spoken
to by the official `openai` client and LangChain's ChatOpenAI; and the RAG pieces that use any
OpenAI-compatible endpoint (the `openai:` generator, the ragas judge) pointed at it. The /v1
routes are in its OpenAPI document and a schemathesis fuzz over them finds no 5xx; a client that
goes away, streaming or not, frees the server."""

import json
import time
import uuid

import httpx
import openai
import pytest

from llmops.llm.tiny import build_tiny_causal_lm
from llmops.rag.generators import make_generator
from llmops.request_log import latest_feedback, read_rows
from tests.conftest import serve_bento
from tests.otlp_receiver import otlp_receiver

pytestmark = [pytest.mark.slow, pytest.mark.integration]
API_KEY = "llm-key-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("models") / "tiny-gpt2")


@pytest.fixture(scope="module")
def llm_log(tmp_path_factory):
    return tmp_path_factory.mktemp("llm-log")


@pytest.fixture(scope="module")
def traces():
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def challenger(tiny_model):
    """(release name, version): the same weights registered as a release, the shadow challenger
    of the module's server."""
    name = "llm-shadow-" + uuid.uuid4().hex[:8]
    return name, _register_llm(name, tiny_model, "TestFlow/shadow", None)


@pytest.fixture(scope="module")
def llm(tiny_model, llm_log, traces, challenger):
    """The tiny model from its folder, served as "llm"; every request is answered again by the
    same weights from the registry (LLMOPS_LLM_SHADOW), off the request path."""
    log_dir = llm_log
    env = {
        "LLMOPS_LLM_MODEL": str(tiny_model),
        "LLMOPS_LLM_MAX_TOKENS": "64",
        "LLMOPS_LLM_BACKEND": "transformers",
        "LLMOPS_TORCH_THREADS": "1",  # the machine is shared: two threads would fight over its cores
        **traces.env,
        "LLMOPS_LLM_SERVED_NAME": "llm",
        "LLMOPS_LLM_RELEASE": challenger[0],
        "LLMOPS_LLM_SHADOW": challenger[1],
        "LLMOPS_SHADOW_SAMPLE": "1",
        "LLMOPS_SHADOW_QUEUE": "4",
    }
    with serve_bento("services.llm:LLM", log_dir, **env) as client:
        yield client


@pytest.fixture
def client(llm):
    return openai.OpenAI(base_url=f"{llm.base_url}/v1", api_key="unused", max_retries=0)


def test_models_and_info_name_the_model_without_its_path_on_the_server(llm, tiny_model):
    models, info = llm.get("/v1/models"), llm.post("/info", json={})
    card = models.json()["data"][0]
    assert [m["id"] for m in models.json()["data"]] == ["llm"] and card["max_model_len"] == 512
    # a folder given by LLMOPS_LLM_MODEL is named by its name alone (a release by name:version)
    assert card["root"] == info.json()["path"] == "tiny-gpt2" and info.json()["adapter"] is False
    assert str(tiny_model.parent) not in models.text + info.text


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


def logged(log_dir, request_id, kind="llm_request", model="llm", count=1, role="champion"):
    """The rows of ``kind`` (and ``role``: a shadow challenger's rows share the request id) logged
    for ``request_id`` once ``count`` are there (flushed every 0.1 s)."""
    deadline, rows = time.monotonic() + 10, []
    while len(rows) < count:
        assert time.monotonic() < deadline, f"no {kind} row for {request_id} in {log_dir}"
        time.sleep(0.1)
        found = read_rows(log_dir, model, kinds=[kind], roles=[role])
        rows = [r for r in found if r["request_id"] == request_id]
    return rows


GREEDY = {"model": "llm", "prompt": "The registry keeps", "max_tokens": 6, "temperature": 0}


def test_a_shadow_challenger_answers_each_request_again_off_the_request_path(llm, llm_log, challenger):
    """The client gets the served model's answer; the challenger (the same weights, from the
    registry) answers the same request once it was sent, streamed or not, and its row carries the
    completion's id, its own release and latency. Feedback rates the served model's answer."""
    name, version = challenger
    reply = llm.post("/v1/completions", json=GREEDY).json()
    chat = {"model": "llm", "messages": [{"role": "user", "content": "Shadow me"}], "max_tokens": 5,
            "temperature": 0, "stream": True}  # fmt: skip
    with llm.stream("POST", "/v1/chat/completions", json=chat) as response:
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: {")]
    for request_id, stream in ((reply["id"], False), (json.loads(lines[0])["id"], True)):
        (champion,) = logged(llm_log, request_id)
        (shadow,) = logged(llm_log, request_id, role="shadow")
        assert (champion["model"], champion["model_version"]) == ("llm", None)  # a folder model
        assert (shadow["model"], shadow["model_version"], shadow["kind"]) == (name, version, "llm_request")
        assert (shadow["route"], shadow["stream"], shadow["status"]) == (champion["route"], stream, 200)
        assert shadow["answer"] == champion["answer"] and shadow["prompt"] == champion["prompt"]  # greedy
        assert shadow["latency_ms"]["total"] >= shadow["latency_ms"]["first_token"] > 0
    choices = [json.loads(line)["choices"] for line in lines]
    streamed = "".join(c[0]["delta"].get("content") or "" for c in choices if c)
    assert champion["answer"] == streamed  # what the client got is the champion's answer
    info = llm.post("/info", json={}).json()["shadow"]
    assert (info["ref"], info["model"], info["version"], info["sample"]) == (version, name, version, 1.0)
    assert info["answered"] >= 2 and info["failed"] == 0
    rated = llm.post("/feedback", json={"request_id": reply["id"], "rating": 1}).json()
    assert rated["model_version"] is None  # the served folder model's answer, not the challenger's


def test_a_streamed_chat_completion_is_logged_with_its_tokens_and_finish_reason(client, llm_log):
    stream = client.chat.completions.create(
        model="llm", messages=[{"role": "user", "content": "Log me"}], max_tokens=6, temperature=0.8,
        seed=7, stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    (row,) = logged(llm_log, chunks[0].id)
    assert (row["kind"], row["route"], row["stream"], row["status"]) == (
        "llm_request",
        "/v1/chat/completions",
        True,
        200,
    )
    assert (row["model"], row["model_version"]) == ("llm", None)  # a folder model: its served name
    assert row["prompt_tokens"] == chunks[-1].usage.prompt_tokens > 0
    assert row["completion_tokens"] == chunks[-1].usage.completion_tokens > 0
    assert row["finish_reason"] in ("stop", "length") and row["answer"] == text
    assert "Log me" in row["prompt"] and row["prompt_chars"] == len(row["prompt"])
    assert row["latency_ms"]["total"] >= row["latency_ms"]["first_token"] > 0


def test_a_streamed_chat_completion_is_one_trace_with_its_tokens_and_time_to_first_token(client, traces):
    stream = client.chat.completions.create(
        model="llm", messages=[{"role": "user", "content": "Trace me"}], max_tokens=5, temperature=0.8,
        seed=11, stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    ident, usage = chunks[0].id, chunks[-1].usage
    mine = lambda s: s.attributes.get("llmops.request_id") == ident  # noqa: E731
    served = lambda s: mine(s) and not s.parent_id and s.name.startswith("POST ")  # noqa: E731
    spans = traces.wait_for(lambda spans: any(mine(s) and s.name == "log" for s in spans)
                            and any(map(served, spans)))  # fmt: skip
    (request,) = filter(served, spans)  # BentoML's span of the request
    stages = {s.name: s for s in spans if s.parent_id == request.span_id}  # the request's own
    generate, log = stages["generate"], stages["log"]
    assert generate.trace_id == log.trace_id == request.trace_id and request.service == "LLM"
    assert request.attributes["gen_ai.response.model"] == "tiny-gpt2"  # a folder model: its name
    assert generate.attributes | {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "llm", "gen_ai.response.id": ident,
        "gen_ai.request.max_tokens": 5, "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens, "llmops.stream": True,
        "gen_ai.response.finish_reasons": [chunks[-2].choices[0].finish_reason],
    } == generate.attributes  # fmt: skip
    assert (
        generate.events == ["gen_ai.first_token"]
        and generate.attributes["gen_ai.server.time_to_first_token"] > 0
    )
    trace = [s for s in spans if s.trace_id == request.trace_id]
    assert "Trace me" not in str([s.attributes for s in trace])  # a prompt is never an attribute
    # the module's shadow challenger answers the request again, off its path, in the same trace
    spans = traces.wait_for(
        lambda spans: any(s.name == "shadow" and s.parent_id == request.span_id for s in spans)
    )
    (shadow,) = [s for s in spans if s.name == "shadow" and s.parent_id == request.span_id]
    assert shadow.attributes["llmops.release.alias"] == shadow.attributes["llmops.release.version"]  # pinned


def test_feedback_on_a_completion_is_logged_and_replaces_the_last(client, llm, llm_log):
    reply = client.completions.create(model="llm", prompt="Rate me", max_tokens=4)
    (row,) = logged(llm_log, reply.id)
    assert (row["route"], row["stream"], row["answer"]) == ("/v1/completions", False, reply.choices[0].text)
    for rating in (1, -1):
        answer = llm.post(
            "/feedback", json={"request_id": reply.id, "rating": rating, "correction": "Better."}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"request_id": reply.id, "model_version": None, "rating": rating}
    rows = logged(llm_log, reply.id, kind="feedback", count=2)
    assert latest_feedback(rows)[reply.id]["rating"] == -1 and rows[-1]["correction"] == "Better."
    unknown = llm.post("/feedback", json={"request_id": "chatcmpl-0000", "rating": 1})
    assert unknown.status_code == 404 and "'chatcmpl-0000'" in unknown.json()["error"]
    bad = llm.post("/feedback", json={"request_id": reply.id, "rating": 2})
    assert bad.status_code == 400 and "rating" in json.dumps(bad.json()["detail"])
    assert "404" in llm.get("/docs.json").json()["paths"]["/feedback"]["post"]["responses"]


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
        ({"seed": 2**64, "temperature": 1.0}, 400, "seed"),
        ({"seed": -1, "temperature": 1.0}, 400, "seed"),
        ({"seed": False}, 400, "seed"),  # JSON false is not 0 (the fuzz sent it)
        ({"frequency_penalty": False}, 400, "frequency_penalty"),
        ({"logprobs": True}, 400, "logprobs"),
        ({"top_logprobs": 2}, 400, "top_logprobs"),
        ({"n": 2}, 400, "n"),
        ({"presence_penalty": 0.5}, 400, "presence_penalty"),
        ({"frequency_penalty": -1}, 400, "frequency_penalty"),
        ({"logit_bias": {"50": 5}}, 400, "logit_bias"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
        ({"response_format": {"type": "json_object"}}, 400, "response_format"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"stop": "x" * 257}, 400, "stop"),
        ({"stop": ["x" * 257]}, 400, "stop"),
        ({"user": "u" * 257}, 400, "user"),
        ({"messages": [{"role": "user", "content": "hi"}] * 1001}, 400, "messages"),
    ],
)
def test_bad_requests_are_4xx_naming_the_field(llm, body, status, param):
    payload = {"model": "llm", "messages": [{"role": "user", "content": "hi"}], **body}
    reply = llm.post("/v1/chat/completions", json=payload)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["param"] == param


def test_seed_overflow_is_400_streaming_or_not_and_the_connection_stays_usable(llm):
    body = {"model": "llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "temperature": 1.0, "seed": 2**64}  # fmt: skip
    with httpx.Client(base_url=str(llm.base_url), timeout=30) as keep_alive:  # one connection
        for stream in (False, True, False):
            reply = keep_alive.post("/v1/chat/completions", json=body | {"stream": stream})
            assert reply.status_code == 400 and reply.json()["error"]["param"] == "seed"
            assert "18446744073709551616" in reply.json()["error"]["message"]
            ok = keep_alive.post("/v1/chat/completions", json=body | {"seed": 2**64 - 1, "stream": stream})
            assert ok.status_code == 200, ok.text
    completion = {"model": "llm", "prompt": "x", "logprobs": 1}
    reply = llm.post("/v1/completions", json=completion)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "unsupported_parameter"
    assert llm.post("/v1/completions", json=completion | {"logprobs": 0, "echo": False}).status_code == 200


def test_half_a_surrogate_pair_is_400_not_a_500(llm):
    # JSON may carry "\udba4" alone (the fuzz sent one): no tokenizer takes it
    body = {"model": "llm", "prompt": "half a pair \udba4", "max_tokens": 4}
    headers = {"Content-Type": "application/json"}
    reply = llm.post("/v1/completions", content=json.dumps(body).encode(), headers=headers)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "prompt"


def test_a_vanishing_temperature_is_greedy_not_a_500(llm):
    # found by the fuzz: 1e-236 overflowed the scaled logits into NaN, and the request failed
    body = {"model": "llm", "prompt": "The registry keeps", "max_tokens": 6}
    greedy = llm.post("/v1/completions", json=body | {"temperature": 0}).json()["choices"][0]["text"]
    reply = llm.post("/v1/completions", json=body | {"temperature": 1.36e-236, "top_p": 0.83})
    assert reply.status_code == 200 and reply.json()["choices"][0]["text"] == greedy


def test_openapi_document_describes_the_v1_routes(llm):
    doc = llm.get("/docs.json").json()
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["required"] is True
    request = doc["components"]["schemas"]["ChatRequest"]
    assert {"model", "messages"} <= set(request["required"]) and request["properties"]["model"]["enum"] == [
        "llm"
    ]
    assert request["properties"]["seed"]["maximum"] == 2**64 and request["properties"]["seed"]["minimum"] == 0
    assert set(chat["responses"]) >= {"200", "400", "404"}
    error = doc["components"]["schemas"]["ErrorBody"]
    assert doc["components"]["schemas"]["ErrorDetail"]["properties"]["param"]["nullable"] is True
    assert error["properties"]["error"] == {"$ref": "#/components/schemas/ErrorDetail"}
    assert "/v1/completions" in doc["paths"] and "/v1/models" in doc["paths"] and "/info" in doc["paths"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/info"])
def test_json_nested_a_thousand_deep_is_a_400_in_the_routes_shape_not_a_500(llm, path):
    """About 1,000 levels (a 2 KB body) overflowed the parser's recursion: a plain-text 500."""
    headers = {"Content-Type": "application/json"}
    deep = b'{"model": "llm", "prompt": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    reply = llm.post(path, content=deep, headers=headers)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]  # OpenAI's shape on /v1
    assert error["code"] == "json_too_deep" if path.startswith("/v1") else "deeper than 64 levels" in error
    at_the_limit = b'{"model": "llm", "prompt": ' + b"[" * 63 + b"]" * 63 + b"}"  # 64 with the body
    reply = llm.post("/v1/completions", content=at_the_limit, headers=headers)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "prompt"  # parsed, then refused


def test_fuzz_the_llm_openapi(llm):
    """tests/fuzz.py over the /v1 routes, /info and /feedback: no 5xx, answers as documented, 4xx name
    their field, a request the document allows is answered 200 (or, for /feedback, 404 for an id
    never answered), and one it does not allow is refused."""
    from tests.fuzz import fuzz_service

    operations = [("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models"),
                  ("POST", "/info"), ("POST", "/feedback")]  # fmt: skip
    report = fuzz_service(str(llm.base_url).rstrip("/"), examples=20, operations=operations, timeout_s=60)
    print(report.summary())
    assert report.requests >= 100 and report.problems == [], report.summary()
    assert report.server_errors == report.refused_valid == report.accepted_invalid == 0, report.summary()


def test_context_length_error_says_what_to_do(llm):
    reply = llm.post("/v1/completions", json={"model": "llm", "prompt": "word " * 600, "max_tokens": 8})
    error = reply.json()["error"]
    assert reply.status_code == 400 and error["code"] == "context_length_exceeded"
    assert "context is 512 tokens" in error["message"]


def test_rag_openai_generator_uses_the_service(llm):
    from llmops.rag.generators import GenerationRequest

    generator = make_generator(f"openai:{llm.base_url}/v1#llm")
    assert generator.settings == {"backend": "openai", "base_url": f"{llm.base_url}/v1", "model": "llm"}
    request = GenerationRequest(messages=[{"role": "user", "content": "Q?"}], question="Q?", contexts=["c"],
                                max_tokens=5, temperature=0.5)  # fmt: skip
    assert isinstance(generator.generate(request), str)
    found = make_generator(f"openai:{llm.base_url}/v1")  # no model: the server's first one
    assert found.model == "llm"


def test_a_traced_caller_of_the_openai_generator_gets_the_services_spans_in_its_trace(
    llm, traces, monkeypatch
):
    from llmops import tracing
    from llmops.rag.generators import GenerationRequest

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", traces.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "rag-caller")
    tracing.shutdown()
    tracing.setup()
    try:
        generator = make_generator(f"openai:{llm.base_url}/v1#llm")
        request = GenerationRequest(messages=[{"role": "user", "content": "Q?"}], question="Q?",
                                    contexts=["c"], max_tokens=3)  # fmt: skip
        with tracing.span("generate") as caller:
            generator.generate(request)
        caller_id = format(caller.get_span_context().span_id, "016x")
    finally:
        tracing.shutdown()  # sends the caller's span
    spans = traces.wait_for(lambda spans: any(s.span_id == caller_id for s in spans)
                            and any(s.parent_id == caller_id for s in spans))  # fmt: skip
    (mine,) = [s for s in spans if s.span_id == caller_id]
    (served,) = [s for s in spans if s.parent_id == caller_id]  # the LLM service's request span
    assert (served.service, served.trace_id, mine.service) == ("LLM", mine.trace_id, "rag-caller")
    assert (
        mine.attributes["gen_ai.usage.output_tokens"] <= 3
        and mine.attributes["gen_ai.response.model"] == "llm"
    )


def test_api_key(tiny_model, tmp_path, llm):
    with serve_bento("services.llm:LLM", tmp_path, LLMOPS_LLM_MODEL=str(tiny_model),
                     LLMOPS_API_KEY=API_KEY) as server:  # fmt: skip
        # the same model without a shadow answers as the module's server, which has one
        auth = {"Authorization": f"Bearer {API_KEY}"}
        alone = server.post("/v1/completions", json=GREEDY, headers=auth).json()["choices"][0]["text"]
        assert alone == llm.post("/v1/completions", json=GREEDY).json()["choices"][0]["text"]
        assert server.post("/info", json={}, headers=auth).json()["shadow"] is None
        assert server.get("/v1/models").status_code == 401
        keyed = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0)
        assert keyed.models.list().data[0].id == "llm"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="wrong", max_retries=0).models.list()
        assert httpx.get(f"{server.base_url}/readyz").status_code == 200
        answer = keyed.completions.create(model="llm", prompt="Keyed", max_tokens=3)
        rated = {"request_id": answer.id, "rating": 1, "comment": "keyed"}
        assert server.post("/feedback", json=rated).status_code == 401
        headers = {"Authorization": f"Bearer {API_KEY}"}
        assert server.post("/feedback", json=rated, headers=headers).status_code == 200
        logged(tmp_path, answer.id, kind="feedback")
    files = list(tmp_path.rglob("*.jsonl"))
    assert files and not [f for f in files if API_KEY in f.read_text()]  # nor any header


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


# ---- a client that goes away frees the server ----------------------------------------------------


@pytest.fixture(scope="module")
def slot_log(tmp_path_factory):
    return tmp_path_factory.mktemp("slot-log")


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory, slot_log):
    """A server with one batch slot and a model slow enough that a long answer takes many seconds:
    a request that kept running after its client left would hold up the next one."""
    folder = build_tiny_causal_lm(tmp_path_factory.mktemp("models") / "slower", n_embd=256, n_layer=6,
                                  n_positions=2048)  # fmt: skip
    env = {"LLMOPS_LLM_MODEL": str(folder), "LLMOPS_LLM_MAX_TOKENS": "1500", "LLMOPS_LLM_MAX_BATCH": "1",
           "LLMOPS_LLM_BACKEND": "transformers", "LLMOPS_TORCH_THREADS": "1"}  # fmt: skip
    with serve_bento("services.llm:LLM", slot_log, **env) as client:
        yield client


LONG = {"model": "llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1500, "temperature": 0}


def _served_promptly(server) -> float:
    began = time.monotonic()
    reply = server.post("/v1/completions", json={"model": "llm", "prompt": "x", "max_tokens": 3}, timeout=60)
    assert reply.status_code == 200, reply.text
    return time.monotonic() - began


def _until_idle(server, seconds: float = 10) -> int:
    deadline = time.monotonic() + seconds
    while (active := server.post("/info", json={}).json()["active_requests"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return active


def test_a_cancelled_non_streaming_request_frees_the_server(one_slot):
    alone = _served_promptly(one_slot)
    leaving = httpx.Client(base_url=str(one_slot.base_url), timeout=1.0)  # gives up after 1 s
    with pytest.raises(httpx.ReadTimeout):
        leaving.post("/v1/chat/completions", json=LONG)
    leaving.close()  # the connection closes: the server sees the client go
    assert _until_idle(one_slot) == 0, "the abandoned request still holds the only slot"
    assert _served_promptly(one_slot) < alone + 5  # 1500 tokens would take far longer


def test_a_cancelled_stream_frees_its_slot(one_slot, slot_log):
    with httpx.Client(base_url=str(one_slot.base_url), timeout=30) as leaving:
        with leaving.stream("POST", "/v1/chat/completions", json=LONG | {"stream": True}) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if '"content"' in line:
                    break  # one piece of text, then the client goes
    assert _until_idle(one_slot) == 0, "the closed stream still holds the only slot"
    assert _served_promptly(one_slot) < 10
    stream_id = json.loads(line.removeprefix("data: "))["id"]
    (row,) = logged(slot_log, stream_id)  # logged when the stream ended, with why it ended
    assert (row["status"], row["finish_reason"], row["stream"]) == (499, "client_disconnected", True)
    assert row["answer_chars"] >= 1 and row["completion_tokens"] is None


def _register_llm(name: str, model_dir, run: str, champion: str | None) -> str:
    """A registry release holding ``model_dir`` as merged weights, registered directly (no flow run);
    promoted when ``champion`` is the champion now (None: there is none yet)."""
    from llmops.llm.release import LlmRelease, register_llm_release

    release = LlmRelease(base_model="tiny", base_fingerprint="test", base_source=str(model_dir),
                         base_bundled=False, merged=True, lora={}, training={}, dataset_version="ds-test",
                         train_steps=0, device="cpu", dtype="float32")  # fmt: skip
    empty = model_dir.parent / f"{model_dir.name}-adapter"
    empty.mkdir(exist_ok=True)
    version, _, _ = register_llm_release(
        name=name, release=release, adapter_dir=empty, base_dir=None, merged_dir=model_dir, scores={},
        evaluation={}, run_pathspec=run,
        gate_decision={"passed": True, "policy_version": "test", "champion_version": champion, "rules": []},
    )  # fmt: skip
    return version


def test_the_llm_service_follows_its_champion_under_load(tiny_model, tmp_path):
    """A promoted release (another model, another tokenizer) is served once the poll sees it,
    while completions, streaming or not, keep coming: none fails, each is answered whole by one
    model (its prompt's token count says which), and after the first answer of the new one only
    it answers."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Event

    from transformers import AutoTokenizer

    from llmops.registry import Registry

    second = build_tiny_causal_lm(tmp_path / "tiny-300", vocab_size=300, n_positions=1024, seed=1)
    prompt = "The registry moves the champion alias when the gate passes"
    counts = {key: len(AutoTokenizer.from_pretrained(folder)(prompt, add_special_tokens=False)["input_ids"])
              for key, folder in (("v1", tiny_model), ("v2", second))}  # fmt: skip
    assert counts["v1"] != counts["v2"]  # how an answer shows which model wrote it
    name = "llm-follow-" + uuid.uuid4().hex[:8]
    v1 = _register_llm(name, tiny_model, "TestFlow/1", None)
    v2 = _register_llm(name, second, "TestFlow/2", "not-the-champion")  # registered, not promoted
    by_count = {counts["v1"]: v1, counts["v2"]: v2}
    env = {"LLMOPS_LLM_RELEASE": name, "LLMOPS_RELOAD_POLL_S": "0.2", "LLMOPS_LLM_BACKEND": "transformers",
           "LLMOPS_LLM_MAX_TOKENS": "64", "LLMOPS_TORCH_THREADS": "1"}  # fmt: skip
    body = {"model": name, "prompt": prompt, "max_tokens": 6, "temperature": 0}
    stop, sent = Event(), []
    with serve_bento("services.llm:LLM", tmp_path, **env) as server:

        def send(streaming: bool) -> None:
            while not stop.is_set():
                started = time.monotonic()
                if not streaming:
                    reply = server.post("/v1/completions", json=body)
                    assert reply.status_code == 200, reply.text
                    usage = reply.json()["usage"]
                else:
                    stream = body | {"stream": True, "stream_options": {"include_usage": True}}
                    with server.stream("POST", "/v1/completions", json=stream) as reply:
                        assert reply.status_code == 200
                        lines = [line.removeprefix("data: ") for line in reply.iter_lines() if line]
                    assert lines[-1] == "[DONE]", lines
                    usage = json.loads(lines[-2])["usage"]
                sent.append((started, time.monotonic(), by_count[usage["prompt_tokens"]]))

        def until(condition, what: str) -> None:
            deadline = time.monotonic() + 60
            while not condition():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                time.sleep(0.05)

        with ThreadPoolExecutor(4) as pool:
            senders = [pool.submit(send, i % 2 == 1) for i in range(4)]
            until(lambda: len(sent) >= 8, "completions of the first release")
            Registry().promote(name, v2)
            until(lambda: any(version == v2 for *_, version in sent), "the poll to serve the new release")
            settled = len(sent)
            until(lambda: len(sent) >= settled + 8, "completions after the swap")
            stop.set()
            for sender in senders:
                sender.result()  # a failed request fails the test here
        info = server.post("/info", json={}).json()
        models = server.get("/v1/models").json()["data"][0]

    assert info["release"] == info["path"] == f"{name}:{v2}"  # no path on the server
    assert models["id"] == name and models["root"] == f"{name}:{v2}" and models["max_model_len"] == 1024
    first_v2 = min(done for _, done, version in sent if version == v2)
    assert {version for started, _, version in sent if started > first_v2} == {v2}
    assert {version for *_, version in sent[:8]} == {v1}
    rows = read_rows(tmp_path, name, kinds=["llm_request"])  # each names the release that answered it
    assert len(rows) >= len(sent) and {r["model_version"] for r in rows} == {v1, v2}
    assert {r["model"] for r in rows} == {name}
