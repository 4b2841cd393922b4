"""The RAG monitor for real: a released index over three short essays, a log written through
``InferenceLogger`` in the service's row shape (off-topic questions, weak retrieval, negative
ratings), a file added to the docs folder; flows/monitor_rag.py judges the window, and with
--rerelease re-indexes and re-evaluates through the gate."""

import uuid
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from metaflow import Run, namespace
from metaflow.cards import get_cards

from llmops.inference_log import InferenceLogger
from llmops.rag.index import chroma_client, open_index
from llmops.registry import Registry
from tests.conftest import REPO, run_flow
from tests.integration.test_rag import ESSAYS
from tests.integration.test_train_flow import card_content

pytestmark = [pytest.mark.slow, pytest.mark.integration]
OFF_TOPIC = ["sourdough bread", "a marathon plan", "Kyoto in autumn", "tax returns", "pasta dough"]
TEMPLATES = ["How do I start with {}?", "What does {} cost?", "Is {} hard?", "Who invented {}?",
             "Where can I learn {}?", "When is the best time for {}?", "Why do people like {}?",
             "What goes wrong with {}?"]  # fmt: skip


FLOW_CLASSES = {"build_rag_index.py": "BuildRagIndexFlow", "evaluate_rag.py": "EvaluateRagFlow",
                "monitor_rag.py": "MonitorRagFlow"}  # fmt: skip


def flow_run(tmp_path, flow, *args, top=()):
    """Run a flow; returns its Run (the run id comes back through --run-id-file)."""
    run_id_file = tmp_path / f"run-id-{uuid.uuid4().hex[:6]}"
    result = run_flow(flow, *args, "--run-id-file", str(run_id_file), top=top, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    namespace(None)
    return Run(f"{FLOW_CLASSES[flow]}/{run_id_file.read_text().strip()}")


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """(release name, docs folder, chroma, golden): the essays indexed, evaluated on a starter
    golden set and released (extractive generator)."""
    from llmops.rag.golden_init import write_starter_golden

    base = tmp_path_factory.mktemp("rag-monitor")
    docs, chroma = base / "essays", str(base / "chroma")
    docs.mkdir()
    for name, text in ESSAYS.items():
        (docs / name).write_text(text)
    golden = base / "golden.yaml"
    write_starter_golden(docs, golden)
    built = flow_run(base, "build_rag_index.py", "--docs", str(docs), "--chroma", chroma, "--shards", "1")
    name = "rag-mon-" + uuid.uuid4().hex[:8]
    flow_run(base, "evaluate_rag.py", "--index", built["end"].task["index_version"].data, "--chroma", chroma,
             "--golden", str(golden), "--release-name", name, "--generators", "extractive")  # fmt: skip
    return name, docs, chroma, golden


def write_log(log_dir, name, version, chunks, start):
    """40 off-topic requests answered from weak hits (one a 503), and 12 ratings, 8 negative."""
    rows = []
    questions = [t.format(topic) for topic in OFF_TOPIC for t in TEMPLATES]
    for i, question in enumerate(questions):
        text, meta = chunks[i % len(chunks)]
        rows.append({
            "kind": "rag_request", "request_id": f"q{i}", "model": name, "model_version": version,
            "timestamp": (start + timedelta(seconds=i)).isoformat(), "route": "/query",
            "versions": {"index": "?", "retrieval_mode": "hybrid"}, "question": question,
            "sources": [{"source": meta["source"], "chunk": meta["position"], "score": 0.12}],
            "top_score": 0.12, "low_confidence": True, "answer": text, "answer_chars": len(text),
            "latency_ms": {"retrieve": 4.0, "generate": 1.0, "total": 6.0 + i},
            "status": 503 if i == 0 else 200, "error": None,
        })  # fmt: skip
    for i in range(12):
        rows.append({"kind": "feedback", "request_id": f"q{i}", "model": name, "model_version": version,
                     "timestamp": (start + timedelta(minutes=5, seconds=i)).isoformat(),
                     "rating": -1 if i < 8 else 1, "correction": None, "comment": None})  # fmt: skip
    logger = InferenceLogger(log_dir, name, flush_interval=0.05)
    logger.log(rows)
    logger.close()


def test_the_monitor_names_every_failed_measure_and_rereleases_through_the_gate(tmp_path, released):
    name, docs, chroma, golden = released
    champion = Registry().get(name)
    index = champion.read_json("release.json")["index"]["version"]
    stored = open_index(chroma_client(chroma), index).get(limit=3, include=["documents", "metadatas"])
    chunks = list(zip(stored["documents"], stored["metadatas"], strict=True))
    start = datetime.now(timezone.utc) - timedelta(hours=1)
    log_dir = tmp_path / "log"
    write_log(log_dir, name, champion.version, chunks, start)
    (docs / "tides.md").write_text("# Tides\n\nThe moon's gravity raises two tidal bulges on the oceans.\n")
    policy = yaml.safe_load((REPO / "evals" / "rag.yaml").read_text())
    # a starter golden set is small: fewer reference questions, less power at the same level
    policy["monitor"] |= {"min_questions": 8, "question_alpha": 0.05}
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    until = (start + timedelta(minutes=30)).isoformat()
    window = ["--release-name", name, "--log-dir", str(log_dir), "--golden", str(golden),
              "--since", start.isoformat(), "--until", until]  # fmt: skip
    top = ("--config", "policy", str(policy_file))

    run = flow_run(tmp_path, "monitor_rag.py", *window, "--docs", str(docs), top=top)
    measure = run["measure"].task
    verdict = measure["verdict"].data
    assert (verdict["requests"], verdict["ratings"], verdict["action"]) == (40, 12, "reindex-and-evaluate")
    failed = {m["name"]: m for m in verdict["measures"] if m["status"] == "failed"}
    assert set(failed) == {
        "question_drift",
        "top_score_ks",
        "low_confidence",
        "negative_feedback",
        "corpus_change",
    }
    assert [r.split(":")[0] for r in verdict["reasons"]] == list(failed)
    assert failed["corpus_change"]["details"]["new"] == ["tides.md"]
    assert failed["negative_feedback"]["value"] == pytest.approx(8 / 12)
    passed = {m["name"] for m in verdict["measures"] if m["status"] == "passed"}
    assert passed == {"groundedness", "latency_p99_ms", "error_rate"}  # answers quote their chunk
    assert measure["passing_questions"].data == []
    assert "monitor.retrain: true or pass --rerelease true" in run["trigger"].task["rerelease_outcome"].data
    card = card_content(get_cards(measure, type="llmops_monitor")[0])
    assert "Question drift map" in card and "Top retrieval scores" in card and "Feedback over time" in card

    again = flow_run(tmp_path, "monitor_rag.py", *window, "--rerelease", "true", "--generators", "extractive",
                     top=top)  # fmt: skip
    assert again["measure"].task["docs_folder"].data == str(docs)  # the folder the index was built from
    trigger = again["trigger"].task
    assert len(trigger["rerelease_runs"].data) == 2  # the incremental index, then the evaluation
    released_now = Registry().get(name)
    assert released_now.version != champion.version, trigger["rerelease_outcome"].data
    assert released_now.read_json("release.json")["index"]["version"] != index


def test_shadow_pairs_are_scored_for_groundedness_against_the_release_index(released):
    from llmops.online_rules import OnlineRules, ShadowEvidence, judge_shadow
    from llmops.rag.shadow_grounding import add_groundedness

    name, _, chroma, _ = released
    release = Registry().get(name)
    index = release.read_json("release.json")["index"]["version"]
    stored = open_index(chroma_client(chroma), index).get(limit=3, include=["documents", "metadatas"])
    pairs = []
    for i, (text, meta) in enumerate(zip(stored["documents"], stored["metadatas"], strict=True)):
        row = {"kind": "rag_request", "request_id": f"s{i}", "timestamp": "2026-12-01T00:00:00+00:00",
               "model_version": release.version, "route": "/query", "answer": text, "answer_sha256": str(i),
               "sources": [{"source": meta["source"], "chunk": meta["position"], "score": 0.8}]}  # fmt: skip
        off_topic = {"role": "shadow", "answer": "Pasta dough rests for an hour before rolling."}
        pairs.append((row, row | off_topic))
    version = release.version  # both sides: one release, one index
    evidence = ShadowEvidence(model=name, champion_version=version, challenger_version=version,
                              kind="rag_request", pairs=pairs)  # fmt: skip
    scored, note = add_groundedness(evidence, name)
    assert [(c["groundedness"], s["groundedness"]) for c, s in scored.pairs] == [(1.0, 0.0)] * 3
    assert note == f"{release.version}: 3 of 3 answers scored; {release.version}: 3 of 3 answers scored"
    drop = judge_shadow(scored, OnlineRules(min_requests=3)).measure("groundedness_drop")
    assert (drop.status, drop.value, drop.limit) == ("failed", 1.0, 0.05)
