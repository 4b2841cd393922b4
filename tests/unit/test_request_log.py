"""The RAG and LLM services' request rows, the text-off mode, the answered-id index and feedback."""

import asyncio
import hashlib
import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from llmops.feedback import AnsweredIndex, Feedback, FeedbackReceipt, RequestLog, document_feedback
from llmops.inference_log import InferenceLogger
from llmops.llm.answered import CLIENT_GONE, AnsweredRequest, reported
from llmops.llm.types import Completion
from llmops.request_log import (
    RequestLogSettings,
    champion_rows,
    feedback_row,
    latest_feedback,
    llm_request_row,
    rag_request_row,
    read_rows,
    request_log_settings,
    text_fields,
)

COMMON = {"request_id", "row", "timestamp", "model", "model_version", "kind"}
ANSWERED = {
    "role",
    "route",
    "answer",
    "answer_sha256",
    "answer_chars",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
    "latency_ms",
    "status",
    "error",
}
VERSIONS = {
    "index": "idx-1",
    "prompt": "rag-answer@p1",
    "generator": "extractive",
    "retrieval_mode": "hybrid",
    "dense_weight": 1.0,
    "bm25_weight": 1.0,
}
SOURCES = [{"source": "gate.md", "chunk": 3, "score": 0.8}, {"source": "drift.md", "chunk": 0, "score": 0.5}]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def rag_row(keep_text=True, **overrides):
    fields = {
        "request_id": "ab12",
        "model": "rag",
        "model_version": "v1",
        "route": "/query",
        "versions": VERSIONS,
        "question": "What is the gate?",
        "sources": SOURCES,
        "answer": "It compares scores [1].",
        "latency_ms": {"retrieve": 3.0, "generate": 5.0, "total": 8.1},
        "keep_text": keep_text,
    }
    return rag_request_row(**fields | overrides)


def llm_row(keep_text=True, **overrides):
    fields = {
        "request_id": "chatcmpl-1",
        "model": "llm",
        "model_version": "v2",
        "route": "/v1/chat/completions",
        "stream": True,
        "prompt": "<user>Hi</user>",
        "answer": "Hello",
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "finish_reason": "stop",
        "latency_ms": {"first_token": 1.0, "total": 2.0},
        "keep_text": keep_text,
    }
    return llm_request_row(**fields | overrides)


def test_a_rag_row_holds_the_contract_fields():
    row = rag_row()
    assert set(row) == COMMON | ANSWERED | {
        "versions",
        "question",
        "question_sha256",
        "question_chars",
        "sources",
        "top_score",
        "low_confidence",
    }
    assert (row["kind"], row["row"], row["route"], row["status"], row["error"]) == (
        "rag_request",
        0,
        "/query",
        200,
        None,
    )
    assert row["versions"] == VERSIONS and row["sources"] == SOURCES and row["top_score"] == 0.8
    assert row["low_confidence"] is None  # the release has no threshold
    assert row["question"] == "What is the gate?" and row["question_sha256"] == sha("What is the gate?")
    assert row["answer_chars"] == len("It compares scores [1].")
    assert datetime.fromisoformat(row["timestamp"]).tzinfo is not None
    json.dumps(row)  # what the log writes
    assert rag_row(low_confidence_below=0.9)["low_confidence"] is True
    assert rag_row(low_confidence_below=0.5)["low_confidence"] is False


def test_a_retrieve_row_has_no_answer_and_an_empty_one_no_top_score():
    row = rag_row(route="/retrieve", answer=None, sources=[])
    assert (row["answer"], row["answer_sha256"], row["answer_chars"]) == (None, None, None)
    assert row["top_score"] is None and row["sources"] == []


def test_an_llm_row_holds_the_contract_fields():
    row = llm_row()
    assert set(row) == COMMON | ANSWERED | {"stream", "prompt", "prompt_sha256", "prompt_chars"}
    assert (row["kind"], row["stream"], row["prompt_tokens"], row["completion_tokens"]) == (
        "llm_request",
        True,
        5,
        2,
    )
    assert row["prompt_sha256"] == sha("<user>Hi</user>") and row["finish_reason"] == "stop"


def test_text_off_logs_hashes_and_lengths_only():
    rag, llm = rag_row(keep_text=False), llm_row(keep_text=False)
    assert rag["question"] is None and rag["answer"] is None
    assert rag["question_sha256"] == sha("What is the gate?") and rag["question_chars"] == 17
    assert llm["prompt"] is None and llm["answer"] is None and llm["answer_sha256"] == sha("Hello")
    assert "What is the gate?" not in json.dumps(rag) and "Hello" not in json.dumps(llm)
    assert text_fields("q", "é", False) == {"q": None, "q_sha256": sha("é"), "q_chars": 1}


def test_the_settings_default_to_text_on_and_seven_days(monkeypatch):
    monkeypatch.delenv("LLMOPS_LOG_TEXT", raising=False)
    monkeypatch.delenv("LLMOPS_FEEDBACK_WINDOW_DAYS", raising=False)
    assert request_log_settings() == RequestLogSettings(log_text=True, feedback_window_days=7)
    monkeypatch.setenv("LLMOPS_LOG_TEXT", "false")
    assert request_log_settings().log_text is False


def test_feedback_rows_keep_what_the_user_wrote():
    row = feedback_row(request_id="ab12", model="rag", model_version="v1", rating=-1, correction="It is X.")
    assert row["kind"] == "feedback" and (row["rating"], row["correction"], row["comment"]) == (
        -1,
        "It is X.",
        None,
    )
    assert COMMON <= set(row)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"request_id": "ab", "rating": 0}, "rating"),
        ({"request_id": "ab", "rating": True}, "rating"),
        ({"request_id": "ab", "rating": "1"}, "rating"),
        ({"request_id": "ab", "rating": 1, "correction": "x" * 4001}, "correction"),
        ({"request_id": "ab", "rating": 1, "comment": "x" * 2001}, "comment"),
        ({"request_id": "ab", "rating": 1, "score": 3}, "score"),
        ({"rating": 1}, "request_id"),
        ({"request_id": "", "rating": 1}, "request_id"),
        ({"request_id": "a b", "rating": 1}, "request_id"),
    ],
)
def test_bad_feedback_names_the_field(body, field):
    with pytest.raises(ValidationError) as caught:
        Feedback.model_validate(body)
    assert caught.value.errors()[0]["loc"][0] == field


def test_the_index_is_bounded_and_keeps_the_newest():
    index = AnsweredIndex(window_days=7, capacity=3)
    for n in range(5):
        index.add(f"r{n}", "v1")
    assert len(index) == 3 and index.get("r0") is None and index.get("r1") is None
    assert index.get("r4").model_version == "v1"


def test_the_index_forgets_requests_older_than_the_window():
    index = AnsweredIndex(window_days=1)
    index.add("old", "v1", at=time.time() - 2 * 86_400)
    index.add("new", "v2")
    assert index.get("old") is None and index.get("new").model_version == "v2"
    assert index.get("new", now=time.time() + 2 * 86_400) is None


def test_the_index_is_rebuilt_from_answered_request_rows_only():
    index = AnsweredIndex(window_days=7)
    rows = [
        rag_row(request_id="a"),
        llm_row(request_id="b"),
        rag_row(request_id="c", status=502),
        feedback_row(request_id="d", model="rag", model_version="v1", rating=1),
        {"request_id": "e", "row": 0, "timestamp": rag_row()["timestamp"], "model": "clf"},
    ]
    assert index.rebuild(rows) == 2
    assert [r for r in "abcde" if index.get(r)] == ["a", "b"]


def test_latest_feedback_takes_the_last_per_request_id():
    first = feedback_row(request_id="a", model="rag", model_version="v1", rating=1)
    later = feedback_row(request_id="a", model="rag", model_version="v1", rating=-1, correction="No.")
    later["timestamp"] = (datetime.fromisoformat(first["timestamp"]) + timedelta(seconds=1)).isoformat()
    other = feedback_row(request_id="b", model="rag", model_version="v1", rating=1)
    found = latest_feedback([later, rag_row(request_id="a"), first, other])
    assert set(found) == {"a", "b"} and found["a"]["rating"] == -1 and found["a"]["correction"] == "No."
    same = dict(first, rating=-1)  # the same moment: the one written last stands
    assert latest_feedback([first, same])["a"]["rating"] == -1


def test_a_request_log_takes_feedback_and_a_restart_keeps_the_answered_ids(tmp_path):
    settings = RequestLogSettings(log_text=False)
    logger = InferenceLogger(tmp_path, "rag", flush_interval=60)
    log = RequestLog(logger, "rag", settings)
    log.request(rag_row(request_id="a1", keep_text=log.keep_text))
    receipt = log.feedback(Feedback(request_id="a1", rating=-1, correction="The gate compares metrics."))
    assert receipt == FeedbackReceipt(request_id="a1", model_version="v1", rating=-1)
    unknown = log.feedback(Feedback(request_id="zz", rating=1))
    assert unknown.status_code == 404
    assert json.loads(unknown.body) == {
        "error": "request_id: 'zz' was not answered by this service in the last 7 days",
        "code": "unknown_request_id",
    }
    logger.close()

    rows = read_rows(tmp_path, "rag")
    assert [r["kind"] for r in rows] == ["rag_request", "feedback"]
    assert rows[0]["question"] is None and rows[1]["correction"] == "The gate compares metrics."
    assert read_rows(tmp_path, "rag", kinds=["feedback"]) == rows[1:]

    again = RequestLog(InferenceLogger(tmp_path, "rag", flush_interval=60), "rag", settings)
    assert again.index.get("a1").model_version == "v1"  # rebuilt from the log
    since = datetime.now(timezone.utc) + timedelta(hours=1)
    assert read_rows(tmp_path, "rag", since=since) == []
    again.logger.close()


def test_a_shadow_row_shares_the_request_id_and_is_never_rated_nor_traffic(tmp_path):
    """The contract of the rows a shadow challenger writes (llmops.shadow): the same kind and
    request_id, its own version and latency; feedback rates the champion's answer, and the
    readers a monitor uses leave shadow rows out."""
    settings = RequestLogSettings()
    logger = InferenceLogger(tmp_path, "rag", flush_interval=60)
    log = RequestLog(logger, "rag", settings)
    champion = rag_row(request_id="r1")
    shadow = rag_row(request_id="r1", model_version="v2", role="shadow", status=500, error="boom",
                     latency_ms={"retrieve": None, "generate": None, "total": 40.0})  # fmt: skip
    assert (champion["role"], shadow["role"], shadow["kind"]) == ("champion", "shadow", champion["kind"])
    with pytest.raises(ValidationError, match="role"):
        rag_row(role="canary")
    log.request(champion)
    log.shadow(shadow)
    assert log.feedback(Feedback(request_id="r1", rating=1)).model_version == "v1"  # the champion's
    logger.close()

    rows = read_rows(tmp_path, "rag")  # every row as written, shadow ones included
    assert [(r["role"], r["model_version"]) for r in rows if r["kind"] == "rag_request"] == [
        ("champion", "v1"),
        ("shadow", "v2"),
    ]
    assert [r["kind"] for r in read_rows(tmp_path, "rag", roles=["champion"])] == ["rag_request", "feedback"]
    assert [r["model_version"] for r in read_rows(tmp_path, "rag", roles=["shadow"])] == ["v2"]
    old = {k: v for k, v in champion.items() if k != "role"}  # written before roles: the champion's
    assert champion_rows([old, shadow, champion]) == [old, champion]
    index = AnsweredIndex(window_days=7)
    assert index.rebuild([shadow]) == 0 and index.rebuild(rows) == 1  # rebuilt from champion rows only
    assert index.get("r1").model_version == "v1"
    again = RequestLog(InferenceLogger(tmp_path, "rag", flush_interval=60), "rag", settings)
    assert again.index.get("r1").model_version == "v1"
    again.logger.close()


def test_feedback_is_declared_404_in_the_document():
    doc = {"paths": {"/feedback": {"post": {"responses": {"200": {}}}}}}
    assert "404" in document_feedback(doc)["paths"]["/feedback"]["post"]["responses"]


def test_a_stream_whose_client_leaves_is_reported_once_as_disconnected():
    seen = []

    async def events():
        yield "data: 1"
        yield "data: 2"

    answered = AnsweredRequest("chatcmpl-x", "/v1/chat/completions", True, "p", backend=None, prompt_tokens=4)

    async def leave_early():
        stream = reported(events(), answered, seen.append)
        await stream.__anext__()
        await stream.aclose()  # what the server does when the client goes

    asyncio.run(leave_early())
    assert seen == [answered] and answered.status == 499 and answered.finish_reason == CLIENT_GONE

    done = AnsweredRequest("cmpl-y", "/v1/completions", True, "p", backend=None)
    done.piece("Hel")
    done.done = Completion(text="Hello", prompt_tokens=1, completion_tokens=2, finish_reason="length")

    async def read_all():
        return [event async for event in reported(events(), done, seen.append)]

    assert len(asyncio.run(read_all())) == 2
    assert seen[-1] is done and done.status == 200 and done.finish_reason == "length"
    assert done.answer == "Hello" and done.first_token is not None
