"""Chroma in client/server mode: one setting, LLMOPS_CHROMA_URL, points the index flow, the
evaluation flow and `services.rag:Rag` at a real `chroma run` server on 127.0.0.1, and the
embedded store ($LLMOPS_HOME/chroma) is never touched."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest
import yaml
from metaflow import Run, namespace

from llmops.registry import Registry
from tests.conftest import REPO, find_free_port, run_flow, serve_bento

pytestmark = [pytest.mark.slow, pytest.mark.integration]
DOCS = ("gate.md", "drift.md")
# the test is about where the index lives, not about the gate: a policy any sane index passes
POLICY = {"model": "rag", "metrics": {"hit_rate": {"min": 0.5}}}
# the `chroma` console script, run by this interpreter wherever its bin folder is
CHROMA_CLI = "import sys; from chromadb.cli.cli import app; sys.argv[0] = 'chroma'; sys.exit(app())"


def flow_run(work, flow, flow_class, *args, top=()):
    """Run a flow; returns its Run (the run id comes back through --run-id-file)."""
    run_id_file = work / f"run-id-{uuid.uuid4().hex[:6]}"
    result = run_flow(flow, *args, "--run-id-file", str(run_id_file), top=top)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    namespace(None)
    return Run(f"{flow_class}/{run_id_file.read_text().strip()}")


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory):
    """`chroma run` on a free port of 127.0.0.1 with its own data folder; yields its URL."""
    port = find_free_port()
    folder = tmp_path_factory.mktemp("chroma-server")
    log = folder / "server.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", CHROMA_CLI, "run", "--host", "127.0.0.1", "--port", str(port),
             "--path", str(folder / "data")],
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"chroma run exited {process.returncode}:\n{log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"chroma run not answering after 30 s:\n{log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the session this fixture started
            process.wait()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A private LLMOPS_HOME: its chroma/ folder is the embedded store that must stay empty."""
    return tmp_path_factory.mktemp("llmops-home")


@pytest.fixture(scope="module")
def released(tmp_path_factory, chroma_server, home):
    """Index two docs files and evaluate + release the index, both flows told only
    LLMOPS_CHROMA_URL; returns (release name, build run, evaluation run)."""
    work = tmp_path_factory.mktemp("server-flows")
    corpus = work / "docs"
    corpus.mkdir()
    for name in DOCS:
        shutil.copy(REPO / "docs" / name, corpus / name)
    golden = yaml.safe_load((REPO / "evals" / "rag_golden.yaml").read_text())
    texts = " ".join((corpus / name).read_text() for name in DOCS)
    questions = [
        q
        for q in golden["questions"]
        if {s.removeprefix("docs/") for s in q["sources"]} <= set(DOCS)
        and all(context in texts for context in q["reference_contexts"])  # still verbatim in the docs
    ][:4]
    assert len(questions) >= 2, "the shipped golden set has too few questions on " + ", ".join(DOCS)
    small_golden, policy = work / "golden.yaml", work / "policy.yaml"
    small_golden.write_text(yaml.safe_dump({"version": 1, "questions": questions}))
    policy.write_text(yaml.safe_dump(POLICY))

    name = "rag-srv-" + uuid.uuid4().hex[:8]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LLMOPS_CHROMA_URL", chroma_server)
        env.setenv("LLMOPS_HOME", str(home))
        env.delenv("LLMOPS_CHROMA_PATH", raising=False)
        built = flow_run(
            work, "build_rag_index.py", "BuildRagIndexFlow", "--docs", str(corpus), "--shards", "1"
        )
        evaluated = flow_run(
            work, "evaluate_rag.py", "EvaluateRagFlow", "--golden", str(small_golden), "--release-name", name,
            "--generators", "extractive", top=("--config", "policy", str(policy)),
        )  # fmt: skip
    return name, built, evaluated


def _server_client(url):
    from llmops.rag.index import chroma_client

    return chroma_client(url)


def test_flows_build_and_release_the_index_on_the_server(released, chroma_server, home):
    name, built, evaluated = released
    index = built["end"].task["index_version"].data
    assert built["start"].task["chroma_location"].data == chroma_server
    assert evaluated["start"].task["chroma_location"].data == chroma_server
    assert evaluated["start"].task["index_version"].data == index  # the newest index on the server
    assert evaluated["end"].task["promoted"].data, evaluated["end"].task["promotion_note"].data
    assert Registry().get(name).read_json("release.json")["chroma"] == chroma_server

    client = _server_client(chroma_server)
    assert index in [c.name for c in client.list_collections()]
    collection = client.get_collection(index)
    assert collection.count() == built["write"].task["corpus_stats"].data["chunks"] > 0
    assert {m["source"] for m in collection.get(include=["metadatas"])["metadatas"]} == set(DOCS)
    assert not (home / "chroma").exists()  # the embedded store got nothing


def test_service_answers_from_the_server_index(released, chroma_server, home, tmp_path):
    name, built, _ = released
    index = built["end"].task["index_version"].data
    env = {"LLMOPS_RAG_RELEASE": name, "LLMOPS_CHROMA_URL": chroma_server, "LLMOPS_HOME": str(home)}
    with serve_bento("services.rag:Rag", tmp_path, **env) as client:
        reply = client.post("/query", json={"question": "How does the gate compare with the champion?"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["versions"]["index_version"] == index and body["sources"]
    stored = _server_client(chroma_server).get_collection(index)
    for source in body["sources"]:
        assert source["path"] in DOCS
        found = stored.get(where={"$and": [{"source": source["path"]}, {"position": source["chunk"]}]})
        assert found["documents"] == [source["text"]]  # the very chunk the server holds
    assert chroma_server in "".join(p.read_text() for p in tmp_path.glob("server-*.log"))
    assert not (home / "chroma").exists()


def test_chroma_location_takes_a_url_or_a_folder_over_the_setting(
    released, chroma_server, tmp_path, monkeypatch
):
    """What the flows do with ``--chroma``: ``chroma_location`` takes a server URL or a folder,
    and either overrides LLMOPS_CHROMA_URL (checked at the function the flows call, not by a run)."""
    from llmops.rag.index import chroma_location, list_indexes

    _, built, _ = released
    monkeypatch.delenv("LLMOPS_CHROMA_URL", raising=False)
    assert chroma_location(chroma_server) == chroma_server
    indexes = list_indexes(_server_client(chroma_location(chroma_server)))
    assert built["end"].task["index_version"].data in [m["index_version"] for m in indexes]
    monkeypatch.setenv("LLMOPS_CHROMA_URL", chroma_server)
    assert chroma_location(str(tmp_path / "store")) == str((tmp_path / "store").resolve())
    assert chroma_location() == chroma_server
