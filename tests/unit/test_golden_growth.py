"""The golden set grows from use: candidates from a real inference log, curated into the file."""

import json
import shutil
import uuid
from pathlib import Path

import pytest

from llmops import paths
from llmops.inference_log import InferenceLogger
from llmops.llm.sft_data import InstructionRecord
from llmops.rag.evaluation import load_golden
from llmops.rag.golden_curation import accept, decisions, golden_candidates, reject
from llmops.rag.golden_growth import GrowthError, candidate_id, cluster_questions, find_candidates
from llmops.request_log import feedback_row, rag_request_row

RELEASE = "rag"
GOLDEN = Path(__file__).parents[2] / "evals" / "rag_golden.yaml"
CHUNK = "To roll back, run `llmops models rollback rag`: the champion alias moves back to where it pointed."


def request(question, *, top=0.9, low=False, sources=None, text=True):
    """A ``rag_request`` row as the service writes it; ``low``: flagged by the release's threshold
    (None: the release has none); ``sources`` may carry chunk text the way a log that keeps it would."""
    given = sources or [{"source": "drift.md", "chunk": 3, "score": top}]
    top = given[0]["score"]
    row = rag_request_row(
        request_id=uuid.uuid4().hex,
        model=RELEASE,
        model_version="v1",
        route="/query",
        versions={"index": "idx-0123456789ab", "prompt": "rag_answer@prompt-abc", "retrieval_mode": "hybrid"},
        question=question,
        sources=[{k: v for k, v in s.items() if k != "text"} for s in given],
        answer="something",
        latency_ms={"total": 12.5},
        keep_text=text,
        low_confidence_below=None if low is None else (top + 0.1 if low else top - 0.1),
    )
    for logged, source in zip(row["sources"], given, strict=True):
        logged.update({"text": source["text"]} if "text" in source else {})
    return row


def feedback(request_id, rating, correction=None):
    return feedback_row(
        request_id=request_id, model=RELEASE, model_version="v1", rating=rating, correction=correction
    )


@pytest.fixture
def log(tmp_path, monkeypatch):
    """Writes rows with the service's logger into a log of its own, under a home of its own."""
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLMOPS_INFERENCE_LOG_DIR", str(tmp_path / "log"))
    logger = InferenceLogger(None, RELEASE)

    def write(*rows):
        logger.log(list(rows))
        assert logger.flush()

    yield write
    logger.close()


@pytest.fixture
def golden(tmp_path):
    path = tmp_path / "rag_golden.yaml"
    shutil.copy(GOLDEN, path)
    return path


def test_a_correction_becomes_a_candidate_with_its_reference_and_sources(log, golden):
    rated = request(
        "How do I undo a promotion?",
        sources=[
            {"source": "registry.md", "chunk": 2, "score": 0.71, "text": CHUNK},
            {"source": "drift.md", "chunk": 0, "score": 0.5},
            {"source": "registry.md", "chunk": 5, "score": 0.4},
        ],
    )
    log(rated, request("What is PSI?"), feedback(rated["request_id"], -1, "Run llmops models rollback rag."))
    report = golden_candidates(golden, RELEASE)
    (candidate,) = report.candidates
    assert candidate.kind == "correction" and candidate.question == "How do I undo a promotion?"
    assert candidate.reference == "Run llmops models rollback rag."
    assert candidate.sources == ["registry.md", "drift.md"] and candidate.requests == 1
    assert candidate.id == candidate_id("correction", candidate.question, candidate.reference)
    assert report.corrections == 1


def test_a_shadow_challengers_row_of_the_same_request_is_not_what_was_corrected(log, golden):
    seen = [{"source": "registry.md", "chunk": 2, "score": 0.7}]
    rated = request("How do I undo a promotion?", sources=seen)
    other = [{"source": "gate.md", "chunk": 0, "score": 0.2}]
    shadow = rated | {"role": "shadow", "model_version": "v2", "sources": other}
    log(rated, shadow, feedback(rated["request_id"], -1, "Run llmops models rollback rag."))
    (candidate,) = golden_candidates(golden, RELEASE).candidates
    assert candidate.sources == ["registry.md"]  # the champion's answer, which the user saw


def test_a_positive_rating_or_one_without_a_correction_is_no_candidate(log, golden):
    good, bare, commented = request("What is PSI?"), request("What is KS?"), request("What is JS?")
    log(good, bare, commented, feedback(good["request_id"], 1, "PSI is a drift statistic."))
    log(feedback(bare["request_id"], -1), feedback(commented["request_id"], -1, "   "))
    report = golden_candidates(golden, RELEASE)
    assert report.candidates == [] and report.corrections == 0


def test_the_latest_feedback_per_request_wins(log, golden):
    first, second = request("How do I undo a promotion?"), request("Where is the log?")
    log(first, second)
    log(feedback(first["request_id"], -1, "Roll back."), feedback(first["request_id"], 1))
    log(feedback(second["request_id"], 1), feedback(second["request_id"], -1, "Under the llmops home."))
    (candidate,) = golden_candidates(golden, RELEASE).candidates
    assert candidate.question == "Where is the log?" and candidate.reference == "Under the llmops home."


SIMILAR = ["How do I roll back the champion?", "how to roll back champion model", "Rolling back the champion"]


def test_three_similar_low_confidence_questions_make_one_candidate_two_do_not(log, golden):
    log(*(request(q, top=0.2, low=True) for q in SIMILAR[:2]), request("What is PSI?", low=True))
    log(request("How do I roll back the champion?", top=0.95))  # confident: not counted
    assert golden_candidates(golden, RELEASE).candidates == []

    log(request(SIMILAR[2], top=0.3, low=None))  # no flag, but under --low-score
    assert golden_candidates(golden, RELEASE).candidates == []
    (candidate,) = golden_candidates(golden, RELEASE, low_score=0.5).candidates
    assert candidate.kind == "low_confidence" and candidate.reference is None and candidate.needs_reference
    assert candidate.question == SIMILAR[0] and candidate.requests == 3
    assert sorted(candidate.questions) == sorted(SIMILAR) and candidate.sources == ["drift.md"]


def test_questions_not_logged_are_counted_not_offered(log, golden):
    hidden = [request(q, low=True, text=False) for q in SIMILAR]
    log(*hidden, feedback(hidden[0]["request_id"], -1, "Roll back."))
    report = golden_candidates(golden, RELEASE)
    assert report.candidates == [] and report.unlogged == 4


def test_clusters_by_vectors_when_given():
    rows = [request(q, low=True) for q in ("alpha", "beta", "gamma", "delta")]
    vectors = {"alpha": [1, 0], "beta": [0.99, 0.1], "gamma": [0.98, 0.12], "delta": [0, 1]}
    (candidate,) = find_candidates(rows, vectors=vectors).candidates
    assert sorted(candidate.questions) == ["alpha", "beta", "gamma"] and candidate.question == "beta"
    groups = cluster_questions(["a b", "a b c", "x y"])
    assert groups == [([0, 1], 0), ([2], 2)]


def test_accept_appends_versions_snapshots_and_writes_a_finetune_record(log, golden, capsys):
    rated = request(
        "How do I undo a promotion?",
        sources=[{"source": "registry.md", "chunk": 2, "score": 0.7, "text": CHUNK}],
    )
    log(rated, feedback(rated["request_id"], -1, "Run llmops models rollback rag."))
    log(*(request(q, low=True) for q in SIMILAR))
    before, text = load_golden(golden), golden.read_text()
    report = golden_candidates(golden, RELEASE)
    correction, cluster = report.candidates
    assert correction.kind == "correction" and cluster.kind == "low_confidence"

    done = accept(golden, report, [correction.id])
    after = load_golden(golden)
    assert len(after.questions) == len(before.questions) + 1 and after.questions[:-1] == before.questions
    added = after.questions[-1]
    assert added.question == correction.question and added.reference == correction.reference
    assert added.reference_contexts == [CHUNK] and added.sources == ["registry.md"]
    assert (done.old_version, done.new_version) == (before.content_version, after.content_version)
    assert done.old_version != done.new_version and (done.old_items, done.new_items) == (24, 25)
    folder = paths.golden_dir() / "rag_golden"
    assert done.snapshot == folder / f"{before.content_version}.yaml" and done.snapshot.read_text() == text
    assert golden.read_text().startswith(text)  # appended: the comments and layout stay
    (line,) = done.finetune_file.read_text().splitlines()
    record = InstructionRecord.model_validate_json(line)
    assert record.response == "Run llmops models rollback rag. [registry.md]"
    assert f"[1] registry.md\n{CHUNK}" in record.input and record.input.endswith(correction.question)

    # decided: not offered again; the cluster needs a reference, and then goes in as well
    (left,) = golden_candidates(golden, RELEASE).candidates
    assert left.id == cluster.id
    with pytest.raises(GrowthError, match="--reference"):
        accept(golden, golden_candidates(golden, RELEASE), [cluster.id])
    done = accept(
        golden, golden_candidates(golden, RELEASE), [cluster.id], reference="llmops models rollback"
    )
    assert done.finetune_file is None and load_golden(golden).questions[-1].question == SIMILAR[0]
    assert golden_candidates(golden, RELEASE).candidates == []
    assert [d.decision for d in decisions(golden)] == ["accepted", "accepted"]


def test_reject_hides_the_candidate_and_unknown_ids_are_errors(log, golden):
    rated = request("How do I undo a promotion?")
    log(rated, feedback(rated["request_id"], -1, "Roll back."))
    report = golden_candidates(golden, RELEASE)
    (candidate,) = report.candidates
    text = golden.read_text()
    with pytest.raises(GrowthError, match="'gc-nope'"):
        reject(golden, report, ["gc-nope"])
    with pytest.raises(GrowthError, match="'gc-nope'"):
        accept(golden, report, ["gc-nope"])
    reject(golden, report, [candidate.id])
    assert golden_candidates(golden, RELEASE).candidates == [] and golden.read_text() == text
    with pytest.raises(GrowthError, match="rejected already"):
        accept(golden, report, [candidate.id])


def test_an_odd_layout_is_rewritten_whole(log, tmp_path):
    golden = tmp_path / "flat.yaml"
    golden.write_text(json.dumps(load_golden(GOLDEN).model_dump()))  # JSON is YAML too
    rated = request("How do I undo a promotion?")
    log(rated, feedback(rated["request_id"], -1, "Roll back."))
    report = golden_candidates(golden, RELEASE)
    done = accept(golden, report, [report.candidates[0].id])
    assert len(load_golden(golden).questions) == done.new_items == 25


def test_without_chunk_text_the_correction_is_its_own_context(log, golden):
    rated = request("How do I undo a promotion?")  # the service logs no chunk text
    log(rated, feedback(rated["request_id"], -1, "Roll back."))
    report = golden_candidates(golden, RELEASE)
    done = accept(golden, report, [report.candidates[0].id])
    added = load_golden(golden).questions[-1]
    assert added.reference_contexts == ["Roll back."] and added.sources == ["drift.md"]
    record = InstructionRecord.model_validate_json(done.finetune_file.read_text())
    assert "[1] drift.md\nRoll back." in record.input and record.response == "Roll back. [drift.md]"
