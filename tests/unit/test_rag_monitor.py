"""The RAG monitor's measures and verdict on rows built here (the contract's shape), and the
``monitor:`` section of a RAG policy."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from llmops.errors import ParameterError
from llmops.gates import PolicyError, load_policy
from llmops.inference_log import InferenceLogger
from llmops.live_measures import Rating
from llmops.rag.monitor import (
    MonitorRules,
    corpus_change,
    decide,
    measure_corpus,
    measure_feedback,
    measure_groundedness,
    measure_judged_faithfulness,
    measure_latency,
    measure_low_confidence,
    measure_question_drift,
    measure_top_scores,
)
from llmops.rag.monitor_sources import (
    grounded_requests,
    grounding_pairs,
    index_manifest,
    judge_from_options,
    judge_window,
    read_window,
    window_from_rows,
)

REPO = Path(__file__).resolve().parents[2]
START = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
RULES = MonitorRules(permutations=200)


def request(i: int, **fields):
    row = {
        "kind": "rag_request",
        "request_id": f"r{i}",
        "timestamp": (START + timedelta(minutes=i)).isoformat(),
        "model": "rag",
        "model_version": "v1",
        "route": "/query",
        "versions": {"index": "idx-1"},
        "question": f"question {i}",
        "sources": [{"source": "a.md", "chunk": 0, "score": 0.7}],
        "top_score": 0.7,
        "low_confidence": False,
        "answer": "The gate checks every rule.",
        "answer_chars": 27,
        "latency_ms": {"retrieve": 5.0, "generate": 20.0, "total": 30.0 + i},
        "status": 200,
        "error": None,
    }
    return row | fields


def rating(i: int, value: int, minute: int = 0):
    return {
        "kind": "feedback",
        "request_id": f"r{i}",
        "timestamp": (START + timedelta(minutes=100 + minute)).isoformat(),
        "model": "rag",
        "model_version": "v1",
        "rating": value,
        "correction": None,
        "comment": None,
    }


def cluster(rng, centre, n):
    """(n, 32) unit vectors around ``centre``."""
    points = centre + 0.05 * rng.standard_normal((n, 32))
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def test_the_policy_holds_a_monitor_section_checked_like_every_field(tmp_path):
    assert load_policy(REPO / "evals" / "rag.yaml").monitor.min_requests == 30
    bad = tmp_path / "rag.yaml"
    bad.write_text("model: rag\nmonitor: {min_requests: 0, retrian: true}\n")
    with pytest.raises(PolicyError, match="min_requests") as failure:
        load_policy(bad)
    assert "retrian" in str(failure.value)


def test_rows_split_by_kind_and_the_latest_feedback_per_request_counts():
    rows = [request(1), rating(1, 1, minute=0), rating(1, -1, minute=5), {"kind": "rag_request"}, {"x": 1}]
    window = window_from_rows(rows)
    assert [r.request_id for r in window.requests] == ["r1"]
    assert [(f.request_id, f.rating) for f in window.feedback] == [("r1", -1)]
    assert window.unreadable == 1  # a rag_request without its fields; a row of another kind is skipped


def test_a_shadow_challengers_rows_are_not_traffic():
    shadow = [request(i) | {"role": "shadow", "model_version": "v2"} for i in range(3)]
    window = window_from_rows([request(1), *shadow, rating(1, -1)])
    assert [r.request_id for r in window.requests] == ["r1"] and len(window.feedback) == 1


def test_a_thin_window_is_not_enough_traffic_and_triggers_nothing():
    requests = window_from_rows([request(i, status=503) for i in range(5)]).requests
    measures = [*measure_latency(requests, RULES), measure_corpus(corpus_change({"a.md": "1"}, {}))]
    verdict = decide(measures, len(requests), 0, RULES)
    assert not verdict.enough_traffic and verdict.action == "none"
    assert verdict.reasons[0] == "not enough traffic: 5 requests < min_requests 30"
    assert verdict.measure("error_rate").status == "not applied"
    assert verdict.measure("corpus_change").status == "failed"  # shown, but it triggers nothing


def test_a_drifted_window_fails_question_drift_and_top_scores_and_asks_for_an_evaluation():
    pytest.importorskip("llmops.rag.question_drift")
    rng = np.random.default_rng(0)
    home, away = rng.standard_normal(32), rng.standard_normal(32)
    reference, window = cluster(rng, home, 40), cluster(rng, away, 40)
    questions = [f"off-topic {i}" for i in range(40)]
    drift = measure_question_drift(reference, window, questions, RULES)
    assert drift.status == "failed" and drift.value < RULES.question_alpha
    assert drift.details["furthest"][0]["question"].startswith("off-topic")
    assert len(drift.details["map"]) == 80
    same = measure_question_drift(reference, cluster(rng, home, 40), questions, RULES)
    assert same.status == "passed"

    scores = measure_top_scores(rng.uniform(0.6, 0.9, 50), rng.uniform(0.1, 0.4, 40), RULES)
    assert scores.status == "failed" and "KS" in scores.reason
    rows = [request(i, top_score=0.2, low_confidence=None) for i in range(40)]
    low = measure_low_confidence(window_from_rows(rows).requests, RULES)
    assert low.status == "failed" and low.value == 1.0  # no flag logged: the score decides

    verdict = decide([drift, scores, low, measure_corpus(corpus_change({}, {}))], 40, 0, RULES)
    assert verdict.action == "evaluate"
    assert [r.split(":")[0] for r in verdict.reasons] == ["question_drift", "top_score_ks", "low_confidence"]


def test_too_few_questions_leave_question_drift_not_applied():
    pytest.importorskip("llmops.rag.question_drift")
    rng = np.random.default_rng(1)
    result = measure_question_drift(cluster(rng, rng.standard_normal(32), 40), np.zeros((0, 32)), [], RULES)
    assert result.status == "not applied" and "not enough traffic" in result.reason


def test_a_changed_corpus_asks_for_a_reindex():
    change = corpus_change({"a.md": "1", "b.md": "2", "c.md": "3"}, {"a.md": "1", "b.md": "9", "d.md": "4"})
    assert (change.new, change.changed, change.deleted) == (["d.md"], ["b.md"], ["c.md"])
    measure = measure_corpus(change)
    assert measure.status == "failed" and measure.value == 3
    assert "1 new, 1 changed, 1 deleted" in measure.reason
    latency = measure_latency(window_from_rows([request(i) for i in range(40)]).requests, RULES)
    verdict = decide([measure, *latency], 40, 0, RULES)
    assert verdict.action == "reindex-and-evaluate" and verdict.reasons[0].startswith("corpus_change")
    assert measure_corpus(None, "the docs folder is gone").status == "not applied"


def test_feedback_counts_only_past_min_ratings():
    def ratings(negative, positive):
        rows = [rating(i, -1) for i in range(negative)] + [rating(100 + i, 1) for i in range(positive)]
        return window_from_rows(rows).feedback

    below = measure_feedback(ratings(5, 0), RULES)
    assert below.status == "not applied" and "5 ratings < min_ratings 10" in below.reason
    above = measure_feedback(ratings(6, 6), RULES)
    assert above.status == "failed" and above.value == 0.5
    assert measure_feedback(ratings(1, 11), RULES).status == "passed"
    assert isinstance(ratings(1, 0)[0], Rating)


def test_latency_percentiles_and_the_error_rate():
    rows = [request(i) for i in range(95)] + [request(100 + i, status=500) for i in range(5)]
    latency, errors = measure_latency(
        window_from_rows(rows).requests, RULES.model_copy(update={"max_error_rate": 0.04})
    )
    assert latency.status == "passed" and latency.details["p50"] < latency.value
    assert errors.status == "failed" and errors.value == pytest.approx(0.05)


class FakeCollection:
    """What the monitor reads of a Chroma collection: metadata pages, and chunks by source."""

    def __init__(self, chunks):
        self.chunks = chunks  # id -> (text, metadata)

    def count(self):
        return len(self.chunks)

    def get(self, where=None, include=(), limit=None, offset=0):
        keys = list(self.chunks)[offset : offset + limit] if limit else list(self.chunks)
        if where:
            keys = [k for k in keys if self.chunks[k][1]["source"] in where["source"]["$in"]]
        return {
            "ids": keys,
            "documents": [self.chunks[k][0] for k in keys],
            "metadatas": [self.chunks[k][1] for k in keys],
        }


def test_groundedness_reads_the_sources_text_from_the_index():
    collection = FakeCollection({
        "id-a": ("The gate checks every rule.", {"source": "a.md", "position": 0, "doc_hash": "h1"}),
        "id-b": ("Bananas are yellow.", {"source": "b.md", "position": 0, "doc_hash": "h2"}),
    })  # fmt: skip
    rows = [
        request(0),
        request(
            1, answer="Quantum tunnelling explains the moon.", sources=[{"source": "b.md", "chunk": "id-b"}]
        ),
    ]
    pairs, why = grounding_pairs(window_from_rows(rows).requests, collection)
    assert len(pairs) == 2 and why == ""
    measure = measure_groundedness(pairs, RULES)
    assert measure.value == pytest.approx(0.5) and measure.status == "passed"
    assert index_manifest(collection, page=1) == {"a.md": "h1", "b.md": "h2"}

    unlogged = window_from_rows([request(i, question=None, answer=None) for i in range(3)]).requests
    pairs, why = grounding_pairs(unlogged, collection)
    assert pairs == [] and "not logged" in why
    assert measure_groundedness(pairs, RULES, why).reason == f"not measured: {why}"


def test_judged_faithfulness_is_the_mean_of_the_scored_sample_against_its_limit():
    rules = MonitorRules(min_judged_faithfulness=0.7)
    passed = measure_judged_faithfulness([0.9, None, 0.7], rules, notes=["faithfulness not scored for 'q'"])
    assert (passed.status, passed.value, passed.limit) == ("passed", pytest.approx(0.8), 0.7)
    assert passed.details["answers"] == 2 and "2 of 3 sampled answers" in passed.reason
    failed = measure_judged_faithfulness([0.5, 0.6], rules)
    assert failed.status == "failed" and failed.value == pytest.approx(0.55)
    assert load_policy(REPO / "evals" / "rag.yaml").monitor.min_judged_faithfulness == 0.7


def test_judged_faithfulness_is_not_applied_when_nothing_was_scored():
    notes = ["faithfulness not scored for 'q': APIConnectionError: Connection error."]
    measure = measure_judged_faithfulness([None, None], RULES, notes=notes)
    assert measure.status == "not applied" and measure.value is None
    assert "none of 2 sampled answers" in measure.reason and notes[0] in measure.reason
    assert measure.details["notes"] == notes


def test_judged_faithfulness_needs_a_judge_and_logged_text(monkeypatch):
    collection = FakeCollection({"id-a": ("The gate checks every rule.", {"source": "a.md", "position": 0})})
    requests = window_from_rows([request(i) for i in range(40)]).requests
    found, why = grounded_requests(requests, collection)
    assert len(found) == 40 and found[0][1] == ["The gate checks every rule."]
    unjudged = judge_window(found, why, RULES, None)
    assert unjudged.status == "not applied" and "no judge configured" in unjudged.reason

    judge = judge_from_options("http://127.0.0.1:9/v1", "llm", 5)
    unlogged = window_from_rows([request(i, answer=None) for i in range(3)]).requests
    measure = judge_window(*grounded_requests(unlogged, collection), RULES, judge, 5)
    assert measure.status == "not applied" and "answers were not logged" in measure.reason

    judged = []

    def judge_samples(samples, judge, metrics):
        judged.append([q for q, _, _ in samples])
        return [{"faithfulness": 1.0} for _ in samples], []

    monkeypatch.setattr("llmops.rag.evaluation.judge_samples", judge_samples)
    measure = judge_window(found, why, RULES, judge, 5)
    assert measure.status == "passed" and measure.value == 1.0
    judge_window(found, why, RULES, judge, 5)
    assert len(judged[0]) == 5 and judged[0] == judged[1]  # a fixed seed: the same sample again
    with pytest.raises(ParameterError, match="--judge-model"):
        judge_from_options("http://127.0.0.1:9/v1", "", 20)
    with pytest.raises(ParameterError, match="--judge-sample"):
        judge_from_options("", "", 0)


def test_the_shared_judge_notes_what_an_unreachable_endpoint_could_not_score():
    import socket

    from llmops.rag.evaluation import Judge, judge_samples

    with socket.socket() as free:  # a port nothing listens on once the socket is closed
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    judge = Judge(url=f"http://127.0.0.1:{port}/v1", model="llm")
    rows, notes = judge_samples(
        [("What moves the alias?", "promote", ["promote moves it"])], judge, ["faithfulness"]
    )
    assert rows == [{"faithfulness": None}]
    assert len(notes) == 1 and notes[0].startswith("faithfulness not scored for 'What moves the alias?'")


def test_read_window_reads_the_contract_rows_the_logger_wrote(tmp_path):
    logger = InferenceLogger(tmp_path, "rag", flush_interval=0.05)
    logger.log([request(i) for i in range(10)] + [rating(3, -1)])
    logger.close()
    window = read_window(tmp_path, "rag", START + timedelta(minutes=2), START + timedelta(minutes=8))
    assert [r.request_id for r in window.requests] == [f"r{i}" for i in range(2, 8)]
    assert window.feedback == []  # rated after the window ends
    everything = read_window(tmp_path, "rag", None, None)
    assert len(everything.requests) == 10 and everything.feedback[0].rating == -1
    assert everything.requests[0].sources[0].chunk == "0"  # a position, as text
