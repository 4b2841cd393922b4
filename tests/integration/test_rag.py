"""The RAG pipeline for real: the index flow over a copy of the shipped docs (then incremental
re-indexing), the evaluation flow with its gate and release, and `bentoml serve services.rag:Rag`
over HTTP. Real Chroma on disk, the real offline embedding model, the real registry."""

import json
import re
import shutil
import time
import uuid

import pytest
from metaflow import Run, namespace
from metaflow.cards import get_cards

from llmops.llm.tiny import build_tiny_causal_lm
from llmops.registry import Registry
from llmops.request_log import latest_feedback, read_rows
from tests.conftest import REPO, run_flow, serve_bento
from tests.integration.test_train_flow import card_content
from tests.llm_endpoint import Behaviour, chat_endpoint
from tests.otlp_receiver import otlp_receiver
from tests.ui_browser import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]
API_KEY = "rag-key-" + uuid.uuid4().hex


def flow_run(tmp_path, flow, *args):
    """Run a flow; returns its Run (the run id comes back through --run-id-file)."""
    run_id_file = tmp_path / f"run-id-{uuid.uuid4().hex[:6]}"
    result = run_flow(flow, *args, "--run-id-file", str(run_id_file))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    namespace(None)
    return Run(f"{_flow_class(flow)}/{run_id_file.read_text().strip()}")


def _flow_class(flow):
    return {"build_rag_index.py": "BuildRagIndexFlow", "evaluate_rag.py": "EvaluateRagFlow"}[flow]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A copy of docs/ (the tests change it) plus a file that cannot be read."""
    folder = tmp_path_factory.mktemp("corpus") / "docs"
    shutil.copytree(REPO / "docs", folder)
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a PDF")
    return folder


@pytest.fixture(scope="module")
def chroma(tmp_path_factory):
    return str(tmp_path_factory.mktemp("chroma"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus, chroma):
    return flow_run(tmp_path_factory.mktemp("build"), "build_rag_index.py", "--docs", str(corpus),
                    "--chroma", chroma)  # fmt: skip


@pytest.fixture(scope="module")
def release(tmp_path_factory, built, chroma):
    """The shipped golden set on the built index: the gate passes and the release is promoted."""
    name = "rag-" + uuid.uuid4().hex[:8]
    index = built["end"].task["index_version"].data
    run = flow_run(tmp_path_factory.mktemp("eval"), "evaluate_rag.py", "--index", index, "--chroma", chroma,
                   "--release-name", name, "--generators", "extractive")  # fmt: skip
    return name, run


def test_index_flow_reports_the_corpus_and_skips_what_it_cannot_read(built, corpus):
    write = built["write"].task
    stats = write["corpus_stats"].data
    shipped = sorted(p.name for p in corpus.glob("*.md"))
    assert stats["files"] == len(shipped) and stats["chunks"] == len(write["chunks"].data)
    assert stats["tokens"] > stats["chunks"] > stats["files"]
    skipped = {s["path"]: s["reason"] for s in stats["skipped"]}
    images = sorted(p.name for p in corpus.glob("*.png"))  # the docs' screenshots: listed, not read
    assert sorted(skipped) == sorted(["broken.pdf", *images])
    assert "unreadable pdf" in skipped["broken.pdf"]
    assert all(skipped[name] == "unsupported file type .png" for name in images)
    unique = {c["content_hash"] for c in write["chunks"].data}
    assert write["embedded_chunks"].data == len(unique)  # identical chunk texts are embedded once
    assert write["reused_chunks"].data == stats["chunks"] - len(unique)
    chunk = write["chunks"].data[0]
    assert {"source", "position", "content_hash", "doc_hash"} <= set(chunk)
    card = card_content(get_cards(write, type="llmops_corpus")[0])
    assert "broken.pdf" in card and write["index_version"].data in card


def test_reindex_embeds_only_changed_files_and_an_unchanged_corpus_is_not_rebuilt(
    tmp_path, built, corpus, chroma
):
    before = built["end"].task["index_version"].data
    (corpus / "serving.md").write_text(
        "# Serving, rewritten\n\nEvery paragraph here is new text for the incremental index test.\n\n"
        + "\n\n".join(
            f"Paragraph {i} about a service that answers over HTTP on a loopback port." for i in range(30)
        )
    )
    (corpus / "faq.md").write_text("# FAQ\n\nA new file: the index must embed it and reuse the rest.\n")
    run = flow_run(tmp_path, "build_rag_index.py", "--docs", str(corpus), "--chroma", chroma)
    write = run["write"].task
    chunks = write["chunks"].data
    changed = {c["content_hash"] for c in chunks if c["source"] in ("serving.md", "faq.md")}
    changed -= {c["content_hash"] for c in built["write"].task["chunks"].data}
    assert write["index_version"].data != before
    assert write["embedded_chunks"].data == len(changed)  # the changed and the new file, nothing else
    assert write["reused_chunks"].data == len(chunks) - len(changed) > 0
    assert run["start"].task["reused_from"].data == before

    again = flow_run(tmp_path, "build_rag_index.py", "--docs", str(corpus), "--chroma", chroma)
    assert again["write"].task["already_built"].data
    assert again["write"].task["embedded_chunks"].data == 0


def test_evaluation_passes_the_gate_and_registers_a_release(release, built):
    name, run = release
    evaluate = run["evaluate"].task
    scores = evaluate["eval_scores"].data
    assert evaluate["gate_decision"].data["passed"], evaluate["gate_decision"].data
    assert scores["hit_rate"] >= 0.8 and 0 < scores["mrr"] <= 1
    assert scores["reference_coverage"] >= 0.7 and 0 < scores["context_precision"] <= 1
    assert {"answer_key", "rouge_l", "string_similarity", "ragas_context_recall"} <= set(scores)
    assert "faithfulness" not in scores  # LLM-judged: only with --judge-url
    champion = Registry().get(name)
    assert champion.version == run["end"].task["release_version"].data
    released = champion.read_json("release.json")
    assert released["index"]["version"] == built["end"].task["index_version"].data
    assert released["generator"] == {
        "backend": "extractive",
        "max_sentences": 2,
        "scorer": "terms-form-rank-v3",
    }
    assert released["retrieval"]["mode"] == "hybrid" and released["retrieval"]["tokenizer"]
    assert champion.metadata["prompt"] == evaluate["prompt_ref"].data
    assert champion.metadata["metrics"] == scores
    card = card_content(get_cards(evaluate, id="eval")[0])
    assert "hit_rate" in card and "Per question" in card


@pytest.fixture(scope="module")
def failed_gate(tmp_path_factory, release, essays):
    """(champion before, run): the shipped golden set (questions about this project's docs) on an
    index of essays about something else, under the release's name: the gate fails."""
    name, _ = release
    champion = Registry().get(name).version
    _, index, chroma = essays
    run = flow_run(tmp_path_factory.mktemp("failed-gate"), "evaluate_rag.py", "--index", index,
                   "--chroma", chroma, "--release-name", name, "--generators", "extractive")  # fmt: skip
    return champion, run


def test_a_release_that_fails_the_gate_is_not_promoted(release, failed_gate):
    """Retrieval finds nothing relevant in the essays, and the gate keeps the champion."""
    name, _ = release
    champion, run = failed_gate
    decision = run["evaluate"].task["gate_decision"].data
    failed = {r["rule"] for r in decision["rules"] if not r["passed"]}
    assert not decision["passed"] and "metrics.hit_rate.min" in failed and "regression.hit_rate" in failed
    assert {"metrics.reference_coverage.min", "metrics.context_precision.min"} <= failed
    assert not run["end"].task["promoted"].data
    assert Registry().get(name).version == champion  # the champion is untouched
    assert "gate:failed" in run.tags and f"model:{name}" in run.tags  # the UI finds a name's decisions by it


def test_bad_evaluation_input_fails_before_any_work(tmp_path, chroma):
    result = run_flow("evaluate_rag.py", "--chroma", chroma, "--index", "idx-000000000000")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "index 'idx-000000000000' is not in the Chroma store" in output
    assert "it has: idx-" in output
    result = run_flow("evaluate_rag.py", "--chroma", chroma, "--k", "0")
    assert result.returncode != 0 and "--k: must be between 1 and 50" in result.stdout + result.stderr


ESSAYS = {
    "bridges.md": """# How bridges stand up

Every bridge must carry the dead load of its own weight and the live load of the traffic crossing it.

## Bridge types

- Beam bridges: a rigid deck resting on piers, cheap for short spans
- Suspension bridges: hang the deck from cables over tall towers, for the longest spans

## Failures

The Tacoma Narrows Bridge collapsed in November 1940 when wind set its deck twisting in aeroelastic flutter.
""",
    "bees.md": """# The honeybee colony

A honeybee colony has one queen, a few hundred drones and tens of thousands of worker bees.

## Foraging

A forager tells her sisters where flowers are with the waggle dance, whose angle gives the direction.

## Threats to bees

- Varroa mites: parasites that feed on bees and spread deformed wing virus
- Pesticides: neonicotinoids impair the bees' navigation
""",
    "sleep.md": """# Why we sleep

Adults need seven to nine hours of sleep a night, while teenagers need eight to ten.

## The body clock

The circadian rhythm is set by a master clock in the suprachiasmatic nucleus of the hypothalamus.
Caffeine blocks adenosine receptors, which is why late coffee makes it harder to fall asleep.
""",
}


@pytest.fixture(scope="module")
def essays(tmp_path_factory, chroma):
    """(docs folder, index version, chroma): three short essays on topics this project's docs never
    touch, indexed once for the first-run test and the failing-gate test."""
    docs = tmp_path_factory.mktemp("essays") / "essays"
    docs.mkdir()
    for name, text in ESSAYS.items():
        (docs / name).write_text(text)
    built = flow_run(tmp_path_factory.mktemp("essays-build"), "build_rag_index.py", "--docs", str(docs),
                     "--chroma", chroma)  # fmt: skip
    return docs, built["end"].task["index_version"].data, chroma


def test_a_new_corpus_with_a_starter_golden_set_passes_and_the_better_generator_is_released(tmp_path, essays):
    """The first-run path on a corpus the project has never seen: golden init, index, evaluate with
    the default policy; two generators answer the same contexts, the LLM (the tiny one stands in
    for SmolLM2) in rounds: it stops early, the extractive one is released, and every candidate's
    scores and the reason for the stop are recorded."""
    from llmops.rag.golden_init import write_starter_golden

    docs, index, chroma = essays
    golden = tmp_path / "golden.yaml"
    assert len(write_starter_golden(docs, golden).questions) >= 8
    model = build_tiny_causal_lm(tmp_path / "tiny-lm")
    name = "rag-new-" + uuid.uuid4().hex[:8]
    run = flow_run(tmp_path, "evaluate_rag.py", "--index", index,
                   "--chroma", chroma, "--golden", str(golden), "--release-name", name,
                   "--generators", f"extractive,transformers:{model}")  # fmt: skip
    evaluate = run["evaluate"].task
    assert evaluate["gate_decision"].data["passed"], evaluate["gate_decision"].data
    candidates = evaluate["generator_candidates"].data
    assert [c["name"] for c in candidates] == ["extractive", f"transformers:{model}"]
    assert all({"hit_rate", "answer_key", "rouge_l"} <= set(c["scores"]) for c in candidates)
    # the tiny random LLM cannot reach the extractive floor: it stops after its first round of 6
    floor, tiny = candidates
    assert floor["answered"] == len(evaluate["eval_rows"].data) > tiny["answered"] == 6
    assert tiny["stop"]["round"] == 1 and tiny["stop"]["bound"] < tiny["stop"]["limit"]
    assert floor["chosen"] and not tiny["chosen"] and tiny["stopped"].startswith(f"{tiny['name']} stopped")
    assert evaluate["eval_scores"].data == floor["scores"]
    released = Registry().get(name).read_json("release.json")
    assert released["generator"] == floor["settings"]
    card = card_content(get_cards(evaluate, id="eval")[0])
    assert "Generator candidates" in card and f"transformers:{model}" in card and "stopped early" in card


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("rag-log")


@pytest.fixture(scope="module")
def traces():
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def rag_server(release, log_dir, traces):
    name, _ = release
    with serve_bento("services.rag:Rag", log_dir, LLMOPS_RAG_RELEASE=name, **traces.env) as client:
        yield client


def test_a_query_is_one_trace_naming_its_release_with_a_span_per_stage(rag_server, release, traces):
    name, run = release
    question = "Which statistics does the drift monitor compute?"
    body = rag_server.post("/query", json={"question": question, "k": 3}).json()
    mine = lambda s: s.attributes.get("llmops.request_id") == body["request_id"]  # noqa: E731
    served = lambda s: mine(s) and not s.parent_id and s.name.startswith("POST ")  # noqa: E731
    spans = traces.wait_for(lambda spans: any(mine(s) and s.name == "log" for s in spans)
                            and any(map(served, spans)))  # fmt: skip
    (request,) = filter(served, spans)  # BentoML's span of the request
    trace = [s for s in spans if s.trace_id == request.trace_id]
    stages = {s.name: s for s in trace if s.parent_id == request.span_id}  # the request's own
    assert {"retrieve", "render_prompt", "generate", "log"} <= set(stages)
    retrieve, generate = stages["retrieve"], stages["generate"]
    assert [s.name for s in trace if s.parent_id == retrieve.span_id] == ["fuse"]  # a hybrid ranking
    versions = body["versions"]
    assert request.service == "Rag" and request.attributes | {
        "llmops.release.name": name, "llmops.release.alias": "champion",
        "llmops.release.version": run["end"].task["release_version"].data,
        "llmops.index.version": versions["index_version"], "llmops.prompt.version": versions["prompt"],
        "llmops.generator": "extractive", "llmops.retrieval.mode": "hybrid", "llmops.question": question,
    } == request.attributes  # fmt: skip
    assert retrieve.attributes["llmops.retrieval.k"] == 3 == retrieve.attributes["llmops.retrieval.hits"]
    assert generate.attributes["gen_ai.operation.name"] == "chat"
    assert generate.attributes["gen_ai.request.model"] == "extractive"
    # the text is the request span's own attribute (LLMOPS_LOG_TEXT allows it), in no other span
    assert not [s.name for s in trace if s is not request and question in str(s.attributes)]


def test_query_answers_with_sources_and_versions(rag_server, release, log_dir):
    name, run = release
    reply = rag_server.post("/query", json={"question": "How does the gate decide about a regression?"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["sources"] and [s["number"] for s in body["sources"]] == list(
        range(1, len(body["sources"]) + 1)
    )
    scores = [s["score"] for s in body["sources"]]  # cosine similarities, in the hybrid ranking's order
    assert all(-1.0 <= score <= 1.0 for score in scores)
    assert "gate.md" in {s["path"] for s in body["sources"]}
    # extractive: the answer is sentences of the sources, each followed by the [n] it came from
    cited = re.findall(r"\s*(.+?) \[(\d+)\]", body["answer"])
    assert cited
    for sentence, number in cited:
        assert sentence in " ".join(body["sources"][int(number) - 1]["text"].split())
    versions = body["versions"]
    assert versions["release"] == f"{name}:{run['end'].task['release_version'].data}"
    assert versions["index_version"] == run["evaluate"].task["index_version"].data
    assert versions["prompt"] == run["evaluate"].task["prompt_ref"].data
    assert versions["retrieval"] == "hybrid"

    row = logged(log_dir, name, body["request_id"])
    assert (row["kind"], row["route"], row["status"], row["error"]) == ("rag_request", "/query", 200, None)
    assert (row["model"], row["model_version"]) == (name, run["end"].task["release_version"].data)
    ranking = Registry().get(name).read_json("release.json")["retrieval"]  # the weights the gate evaluated
    weights = {key: ranking[key] for key in ("dense_weight", "bm25_weight")}
    assert row["versions"] == {"index": versions["index_version"], "prompt": versions["prompt"],
                               "generator": "extractive", "retrieval_mode": "hybrid", **weights}  # fmt: skip
    assert row["question"].startswith("How does the gate") and row["answer"] == body["answer"]
    assert row["question_chars"] == len(row["question"]) and len(row["answer_sha256"]) == 64
    assert [(s["source"], s["chunk"]) for s in row["sources"]] == [
        (s["path"], s["chunk"]) for s in body["sources"]
    ]
    assert row["top_score"] == pytest.approx(scores[0]) and row["low_confidence"] is None
    assert set(row["latency_ms"]) == {"retrieve", "generate", "total"} and row["latency_ms"]["total"] > 0


def logged(log_dir, name, request_id, kind="rag_request"):
    """The row of ``kind`` logged for ``request_id`` (the log writer flushes every 0.1 s)."""
    for _ in range(100):
        rows = [r for r in read_rows(log_dir, name, kinds=[kind]) if r["request_id"] == request_id]
        if rows:
            return rows[-1]
        time.sleep(0.1)
    raise AssertionError(f"no {kind} row for {request_id} in {log_dir}")


def test_retrieve_with_filters(rag_server):
    reply = rag_server.post("/retrieve", json={"question": "drift thresholds", "k": 3,
                                              "filters": {"source": "drift.md"}})  # fmt: skip
    assert reply.status_code == 200, reply.text
    sources = reply.json()["sources"]
    assert len(sources) == 3 and {s["path"] for s in sources} == {"drift.md"}


def test_feedback_on_an_answer_is_logged_beside_it_and_replaces_the_last(rag_server, release, log_dir):
    name, _ = release
    request_id = rag_server.post("/retrieve", json={"question": "drift thresholds"}).json()["request_id"]
    row = logged(log_dir, name, request_id)
    assert (row["route"], row["answer"], row["latency_ms"]["generate"]) == ("/retrieve", None, None)
    for rating, correction in ((1, None), (-1, "The drift thresholds are in evals/<model>.yaml.")):
        rated = {
            "request_id": request_id,
            "rating": rating,
            "correction": correction,
            "comment": "from the test",
        }
        reply = rag_server.post("/feedback", json=rated)
        assert reply.status_code == 200, reply.text
        assert reply.json() == {
            "request_id": request_id,
            "model_version": row["model_version"],
            "rating": rating,
        }
    deadline, rows = time.monotonic() + 10, []
    while len(rows) < 2:
        assert time.monotonic() < deadline, rows
        time.sleep(0.1)
        rows = [r for r in read_rows(log_dir, name, kinds=["feedback"]) if r["request_id"] == request_id]
    latest = latest_feedback(rows)[request_id]
    assert (latest["rating"], latest["model"], latest["model_version"]) == (-1, name, row["model_version"])
    assert latest["correction"].startswith("The drift thresholds") and latest["comment"] == "from the test"


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"request_id": "0123abcd", "rating": 1}, 404, "request_id"),
        ({"request_id": "0123abcd", "rating": 5}, 400, "rating"),
        ({"request_id": "0123abcd", "rating": True}, 400, "rating"),
        ({"request_id": "0123abcd", "rating": 1, "correction": "x" * 4001}, 400, "correction"),
        ({"request_id": "0123abcd", "rating": 1, "stars": 5}, 400, "stars"),
        ({}, 400, "request_id"),
    ],
)
def test_bad_feedback_is_4xx_naming_the_field(rag_server, payload, status, field):
    reply = rag_server.post("/feedback", json=payload)
    assert reply.status_code == status, reply.text
    body = reply.json()
    if status == 404:
        assert body["code"] == "unknown_request_id" and "'0123abcd' was not answered" in body["error"]
    else:
        assert field in json.dumps(body["detail"])


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"question": "   "}, "question"),
        ({"question": "x" * 5000}, "question"),
        ({"question": "ok?", "k": 0}, "k"),
        ({"question": "ok?", "k": 500}, "k"),
        ({"question": "ok?", "filters": {"colour": "red"}}, "filters"),
        ({"question": "ok?", "filters": {"source": []}}, "filters"),
        ({"question": ""}, "question"),
        ({"question": "\u000b\u3000"}, "question"),  # only whitespace, as the document's pattern says
        ({"k": 3}, "question"),
        # each value was one SQL variable: 32,766 and more were over SQLite's limit, a 500
        ({"question": "ok?", "filters": {"source": ["x.md"] * 40_000}}, "filters"),
        ({"question": "ok?", "filters": {"kind": "k" * 1025}}, "filters"),
    ],
)
def test_bad_requests_get_400_naming_the_field(rag_server, payload, field):
    reply = rag_server.post("/query", json=payload)
    assert reply.status_code == 400, reply.text
    assert field in json.dumps(reply.json()["detail"])


def test_the_rag_openapi_enumerates_filters_and_requires_a_question(rag_server):
    """Finding 4: no minLength on question, filter keys not enumerated, detail declared a string."""
    doc = rag_server.get("/docs.json").json()
    schemas = doc["components"]["schemas"]
    for path in ("/query", "/retrieve"):
        operation = doc["paths"][path]["post"]
        body = operation["requestBody"]
        assert body["required"] is True
        question = body["content"]["application/json"]["schema"]["properties"]["question"]
        assert question["minLength"] == 1
        pattern = question["pattern"]  # a character that is not whitespace
        assert re.search(pattern, "\u000b \u3000\n") is None and re.search(pattern, " a")
    filters = schemas["Filters"]
    assert set(filters["properties"]) == {"source", "kind", "doc_hash"}
    values = filters["properties"]["source"]["anyOf"]
    assert values[0]["maxLength"] == 1024 and values[1]["maxItems"] == 1000
    assert filters["additionalProperties"] is False
    assert schemas["InvalidArgument"]["properties"]["detail"]["type"] == "array"


def test_json_nested_a_thousand_deep_is_400_not_500(rag_server):
    deep = b'{"question": "ok?", "filters": {"source": ' + b"[" * 1000 + b"]" * 1000 + b"}}"
    reply = rag_server.post("/retrieve", content=deep, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400 and "deeper than 64 levels" in reply.json()["error"]


def test_fuzz_the_rag_openapi(rag_server):
    """A bounded schemathesis fuzz of every operation: no 5xx, answers as documented, 4xx name fields,
    and every request the document allows is answered 2xx."""
    from tests.fuzz import fuzz_service

    report = fuzz_service(str(rag_server.base_url).rstrip("/"), examples=30)
    print(report.summary())
    assert report.requests >= 100, report.summary()
    assert report.server_errors == 0 and report.refused_valid == 0 and report.problems == [], report.summary()


def test_api_key_and_a_local_transformers_generator(release, log_dir, tmp_path):
    name, _ = release
    model = build_tiny_causal_lm(tmp_path / "tiny-lm")
    env = {"LLMOPS_RAG_RELEASE": name, "LLMOPS_API_KEY": API_KEY, "LLMOPS_GENERATOR": f"transformers:{model}"}
    with serve_bento("services.rag:Rag", log_dir, **env) as client:
        assert client.post("/query", json={"question": "What is the gate?"}).status_code == 401
        reply = client.post("/query", json={"question": "What is the gate?"},
                            headers={"Authorization": f"Bearer {API_KEY}"})  # fmt: skip
        assert reply.status_code == 200, reply.text
        assert reply.json()["versions"]["generator"] == f"transformers:{model}"
        assert reply.json()["sources"]
        rated = {"request_id": reply.json()["request_id"], "rating": 1}
        assert client.post("/feedback", json=rated).status_code == 401
        reply = client.post("/feedback", json=rated, headers={"Authorization": f"Bearer {API_KEY}"})
        assert reply.status_code == 200, reply.text
        logged(log_dir, name, rated["request_id"], kind="feedback")
    files = list(log_dir.rglob("*.jsonl"))
    assert files and not [f for f in files if API_KEY in f.read_text()]  # nor any header


def test_an_llm_server_that_refuses_or_is_late_gets_502_or_504_with_the_reason(release, log_dir):
    """Answers written by an LLM server elsewhere (LLMOPS_GENERATOR=openai:...): when it refuses
    the prompt or does not answer in time, /query says so and why, not a bare 500, and the next
    query is answered once the server is well again."""
    name, _ = release
    refusal = "this model's context is 512 tokens; the messages have 900"
    llm = Behaviour(status=400, message=refusal)
    with chat_endpoint(llm) as url:
        env = {"LLMOPS_RAG_RELEASE": name, "LLMOPS_GENERATOR": f"openai:{url}#m",
               "LLMOPS_GENERATOR_TIMEOUT_S": "1", "LLMOPS_GENERATOR_RETRIES": "0"}  # fmt: skip
        with serve_bento("services.rag:Rag", log_dir, **env) as client:
            question = {"question": "What is the gate?", "k": 2}
            refused = client.post("/query", json=question)
            assert refused.status_code == 502, refused.text
            assert refused.json() == {"error": f"generator: {url} answered 400: {refusal}"}
            retrieved = client.post("/retrieve", json=question)  # needs no LLM: still answers
            assert retrieved.status_code == 200 and len(retrieved.json()["sources"]) == 2
            llm.status, llm.delay_s, llm.message = 200, 3, "The gate compares scores [1]."
            late = client.post("/query", json=question)
            assert late.status_code == 504, late.text
            assert f"{url} gave no answer within 1 s" in late.json()["error"]
            llm.delay_s = 0
            answered = client.post("/query", json=question)
            assert answered.status_code == 200, answered.text
            assert answered.json()["answer"] == "The gate compares scores [1]."
            assert len(answered.json()["sources"]) == 2
            responses = client.get("/docs.json").json()["paths"]["/query"]["post"]["responses"]
            assert {"502", "504"} <= responses.keys()


def test_the_rag_service_composed_with_the_llm_service(release, log_dir, tmp_path):
    """services.rag_llm:RagWithLLM: bentoml serve starts the LLM service beside the RAG one
    (bentoml.depends), and answers come from it over BentoML's own connection, no URL given. Eight
    chunks are more than the model's context holds: the LLM service refuses the prompt, and the
    answer comes from the best ranked chunks that fit."""
    name, _ = release
    model = build_tiny_causal_lm(tmp_path / "tiny-lm", n_positions=2048)  # room for a RAG prompt
    env = {"LLMOPS_RAG_RELEASE": name, "LLMOPS_API_KEY": API_KEY, "LLMOPS_LLM_MODEL": str(model),
           "LLMOPS_LLM_SERVED_NAME": "composed-tiny", "LLMOPS_GENERATOR_TIMEOUT_S": "120"}  # fmt: skip
    with serve_bento("services.rag_llm:RagWithLLM", log_dir, ready_s=240, **env) as client:
        question = {"question": "What is the gate?", "k": 8}
        auth = {"Authorization": f"Bearer {API_KEY}"}
        reply = client.post("/query", json=question, headers=auth)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        # the model id came from the LLM service's /v1/models (through its key check), so the
        # answer was written there
        assert body["versions"]["generator"] == "composed:composed-tiny"
        retrieved = client.post("/retrieve", json=question, headers=auth).json()["sources"]
        assert body["answer"].strip() and 1 <= len(body["sources"]) < len(retrieved) == 8
        assert body["sources"] == retrieved[: len(body["sources"])]  # the best ranked ones


def _register_copy(name: str, release, prompt, run: str, champion: str | None) -> str:
    """Register ``release`` under ``name`` directly (no flow run); promoted when ``champion`` is the
    champion now (None: there is none yet)."""
    from llmops.rag.release import register_rag_release

    version, _, _ = register_rag_release(
        name=name, release=release, prompt=prompt, scores={}, evaluation={},
        gate_decision={"passed": True, "policy_version": "test", "champion_version": champion, "rules": []},
        golden_version="golden-test", run_pathspec=run,
    )  # fmt: skip
    return version


def test_the_rag_service_follows_its_champion_under_load(release, essays, log_dir, rag_server):
    """A promoted release with another index, retrieval mode, k and generator settings is served
    after POST /reload while queries keep coming: none fails, each answer comes whole from one
    release (its index, its k), and after the reload only the new one answers. Meanwhile that
    release shadows every query (LLMOPS_RAG_SHADOW, pinned): the client gets the champion's
    answer, the same as a service without a shadow gives, and the challenger's answer is logged
    beside it under the same request id, with its own versions."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Event

    from llmops.rag.index import IndexInfo, chroma_client, open_index
    from llmops.rag.release import load_release
    from llmops.rag.retriever import RetrievalSettings

    first, prompt = load_release(Registry().get(release[0]))
    _, essays_index, chroma = essays
    index = IndexInfo.from_metadata(open_index(chroma_client(chroma), essays_index).metadata)
    second = first.model_copy(update={"index": index, "k": 2, "retrieval": RetrievalSettings(mode="dense"),
                                      "generator": {**first.generator, "max_sentences": 1}})  # fmt: skip
    name = "rag-follow-" + uuid.uuid4().hex[:8]
    v1 = _register_copy(name, first, prompt, "TestFlow/1", None)
    v2 = _register_copy(name, second, prompt, "TestFlow/2", "not-the-champion")  # registered, not promoted
    expected = {v1: (first.index.version, "hybrid", 4), v2: (index.version, "dense", 2)}

    stop, sent = Event(), []
    shadow = {"LLMOPS_RAG_SHADOW": v2, "LLMOPS_SHADOW_SAMPLE": "1", "LLMOPS_SHADOW_QUEUE": "4"}
    with serve_bento("services.rag:Rag", log_dir, LLMOPS_RAG_RELEASE=name, **shadow) as client:
        question = {"question": "How does the gate decide about a regression?"}
        shadowed = client.post("/query", json=question).json()
        alone = rag_server.post("/query", json=question).json()  # the same release, without a shadow
        assert (shadowed["answer"], shadowed["sources"]) == (alone["answer"], alone["sources"])
        rated = client.post("/feedback", json={"request_id": shadowed["request_id"], "rating": -1}).json()
        assert rated["model_version"] == v1  # the champion's answer, not its shadow's

        def send() -> None:
            while not stop.is_set():
                started = time.monotonic()
                reply = client.post("/query", json={"question": "How does a bridge carry its load?"})
                sent.append((started, time.monotonic(), reply))

        def until(count: int) -> None:
            deadline = time.monotonic() + 120
            while len(sent) < count:
                assert time.monotonic() < deadline, f"{len(sent)} of {count} queries answered"
                time.sleep(0.05)

        with ThreadPoolExecutor(3) as pool:
            senders = [pool.submit(send) for _ in range(3)]
            until(10)
            Registry().promote(name, v2)
            reloaded_at = time.monotonic()
            reload = client.post("/reload")
            reload_answered = time.monotonic()
            until(len(sent) + 10)
            stop.set()
            for sender in senders:
                sender.result()
        info = client.post("/info", json={}).json()
        again = client.post("/reload").json()

    assert [r.status_code for *_, r in sent if r.status_code != 200] == []
    assert reload.status_code == 200, reload.text
    assert reload.json() == {"model": name, "previous": v1, "current": v2, "reloaded": True, "error": None}
    assert (again["previous"], again["current"], again["reloaded"]) == (v2, v2, False)
    assert (info["version"], info["versions"]["index_version"]) == (v2, index.version)
    served = []
    for started, done, reply in sent:
        body = reply.json()
        version = body["versions"]["release"].removeprefix(f"{name}:")
        index_version, mode, k = expected[version]
        assert (body["versions"]["index_version"], body["versions"]["retrieval"]) == (index_version, mode)
        assert 1 <= len(body["sources"]) <= k
        assert all((s["path"] in ESSAYS) == (version == v2) for s in body["sources"])
        served.append((started, done, version))
    assert {v for _, done, v in served if done < reloaded_at} == {v1}
    assert {v for started, _, v in served if started > reload_answered} == {v2}

    shadow_info = info["shadow"]
    assert (shadow_info["ref"], shadow_info["version"], shadow_info["sample"]) == (v2, v2, 1.0)
    assert shadow_info["answered"] >= 1 and shadow_info["failed"] == 0
    counted = ("answered", "failed", "dropped", "queued", "in_flight")
    assert shadow_info["sampled"] == sum(shadow_info[k] for k in counted) == len(sent) + 1
    rows = read_rows(log_dir, name, kinds=["rag_request"])
    champions = {r["request_id"]: r for r in rows if r["role"] == "champion"}
    shadows = [r for r in rows if r["role"] == "shadow"]
    assert shadows and all(r["request_id"] in champions for r in shadows)  # the same request ids
    for row in shadows:
        assert (row["model_version"], row["status"], row["versions"]["index"]) == (v2, 200, index.version)
        assert row["versions"]["retrieval_mode"] == "dense" and row["latency_ms"]["total"] > 0
    first_shadowed = champions[shadowed["request_id"]]  # answered by v1, shadowed by v2
    assert (first_shadowed["model_version"], first_shadowed["versions"]["index"]) == (v1, first.index.version)
    assert shadowed["request_id"] in {r["request_id"] for r in shadows}


# ---- llmops ui in a real browser, over this module's runs and service (tests/ui_browser.py) ------------


@pytest.fixture(scope="module")
def ui(release, failed_gate, rag_server, log_dir, tmp_path_factory):
    """(driver, UI url, screenshot folder, monitor run): a monitor run of the release over the
    service's log (the earlier tests' queries), `llmops ui` with the key and two playground services
    (the running RAG service twice), and one Chromium session for every browser test."""
    from tests.ui_browser import browser_missing, chromium, ui_server

    if (why := browser_missing()) is not None:
        pytest.skip(f"no browser for the UI tests: {why}")
    name, _ = release
    base = tmp_path_factory.mktemp("ui")
    for question in ("What does the gate check?", "How is drift measured?", "How do I roll back?"):
        assert rag_server.post("/query", json={"question": question}).status_code == 200  # a window to judge
    run_id_file = base / "monitor-run-id"
    result = run_flow("monitor_rag.py", "--release-name", name, "--log-dir", str(log_dir),
                      "--run-id-file", str(run_id_file))  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    monitor = Run(f"MonitorRagFlow/{run_id_file.read_text().strip()}")
    golden = base / "rag_golden.yaml"  # a copy: the page must not touch the project's own
    shutil.copy(REPO / "evals" / "rag_golden.yaml", golden)
    url = str(rag_server.base_url).rstrip("/")
    args = ("--service", f"champion={url}", "--service", f"challenger={url}", "--golden", str(golden))
    env = {"LLMOPS_API_KEY": API_KEY, "LLMOPS_INFERENCE_LOG_DIR": str(log_dir)}
    with ui_server(REPO, base / "ui.log", *args, env=env) as address, chromium() as driver:
        yield driver, address, base, monitor


def shot(ui, page: str) -> None:
    driver, _, folder, _ = ui
    driver.save_screenshot(str(folder / f"{page}.png"))
    print(f"screenshot: {folder / page}.png")


def test_ui_models_page_lists_the_champion_with_its_version(ui, release):
    driver, address, _, _ = ui
    name, run = release
    driver.get(f"{address}/models")
    row = driver.find_element("css selector", f"#model-{name} tr[data-version]")
    assert row.get_attribute("data-version") == run["end"].task["release_version"].data
    assert "champion" in row.text and run.pathspec in row.text
    shot(ui, "models")
    driver.get(f"{address}/models/no-such-model")
    assert "model 'no-such-model' is not registered" in driver.page_source  # a 404 page, no traceback


def test_ui_gate_page_shows_a_failed_rule_with_its_value_and_limit(ui, release, failed_gate):
    driver, address, _, _ = ui
    _, run = failed_gate
    rules = {r["rule"]: r for r in run["evaluate"].task["gate_decision"].data["rules"]}
    driver.get(f"{address}/gates/{release[0]}?status=failed")
    decision = driver.find_element("css selector", "details.decision.failed")
    assert run.pathspec in decision.text and "FAILED" in decision.text
    cells = decision.find_element("xpath", ".//tr[td/code[text()='metrics.hit_rate.min']]").text
    assert f"{rules['metrics.hit_rate.min']['value']:.4g}" in cells and "FAIL" in cells
    assert f"{rules['metrics.hit_rate.min']['limit']:.4g}" in cells
    shot(ui, "gates")
    driver.get(f"{address}/runs/{run.pathspec}")
    driver.find_element("link text", "gate card").click()
    frame = driver.find_element("css selector", "iframe.card")
    driver.switch_to.frame(frame)
    wait_for(driver, "return document.body && document.body.innerText.includes('metrics.hit_rate.min')")
    driver.switch_to.default_content()
    shot(ui, "card")


def test_ui_monitoring_draws_the_verdicts_over_time(ui, release):
    driver, address, _, monitor = ui
    driver.get(f"{address}/monitoring/{release[0]}")
    drawn = "figure[data-drawn] svg"
    marks = wait_for(driver, f"return document.querySelectorAll('{drawn} .mark-symbol path').length")
    assert marks >= 5  # a point per measure of the run
    assert monitor.pathspec in driver.page_source
    shot(ui, "monitoring")
    driver.get(f"{address}/golden?release={release[0]}")
    assert "Candidates from" in driver.page_source
    shot(ui, "golden")


def test_ui_playground_answers_side_by_side_with_sources_and_takes_a_rating(ui, release, log_dir):
    driver, address, _, _ = ui
    driver.get(f"{address}/playground")
    driver.find_element("id", "question").send_keys(
        "How does the gate compare a candidate with the champion?"
    )
    driver.find_element("id", "ask-button").click()
    wait_for(
        driver, "return [...document.querySelectorAll('.answer')].every(p => p.dataset.state === 'done')"
    )
    for side in ("left", "right"):
        panel = driver.find_element("id", f"answer-{side}")
        assert panel.find_element("css selector", ".text").text.strip()
        sources = panel.find_elements("css selector", "li.source")
        assert sources and "score " in sources[0].text and ".md #" in sources[0].text
    assert release[0] in driver.find_element("css selector", "#answer-left .release").text
    request_id = driver.find_element("id", "answer-left").get_attribute("data-request-id")
    driver.find_element("css selector", "#answer-left .up").click()
    wait_for(driver, "return document.querySelector('#answer-left .rated').textContent")
    assert "rated good" in driver.find_element("css selector", "#answer-left .rated").text
    assert logged(log_dir, release[0], request_id, kind="feedback")["rating"] == 1
    shot(ui, "playground")


def test_ui_promote_moves_the_alias_only_with_the_key(ui, release):
    driver, address, _, _ = ui
    name, _ = release
    champion = Registry().get(name).version
    driver.get(f"{address}/models/{name}")
    assert not driver.find_elements("css selector", "button.promote")  # no key given yet
    refused = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"fetch('/models/{name}/promote', {{method: 'POST', body: new URLSearchParams("
        f"{{version: '{champion}', alias: 'challenger'}})}}).then(r => done(r.status));"
    )
    assert refused == 401 and "challenger" not in Registry().aliases(name)
    driver.find_element("link text", "log in to promote or roll back").click()
    driver.find_element("id", "key").send_keys(API_KEY)
    driver.find_element("id", "login").click()
    button = f"tr[data-version='{champion}'] button[data-alias='challenger']"
    wait_for(driver, f'return document.querySelector("{button}")')  # back on the page, with the key
    driver.find_element("css selector", button).click()
    wait_for(driver, 'return document.querySelector("tr[data-version] .alias.challenger")')
    assert Registry().aliases(name)["challenger"] == champion
    shot(ui, "model")
