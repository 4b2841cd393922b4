"""Every flow end to end on the production backends: Metaflow's S3 datastore against a real S3
API (moto_server on 127.0.0.1), and the RAG index on a real Chroma server (`chroma run`).

Artifacts, task metadata and cards go to s3://llmops/metaflow, the Client API reads them back, and
the bucket itself is listed to prove they are there and not in ./.metaflow. One setting,
LLMOPS_CHROMA_URL, points the index flow, the evaluation flow and `services.rag:Rag` at the Chroma
server, and the embedded store ($LLMOPS_HOME/chroma) is never touched.

Three chains run side by side to keep the wall time down: train_classifier → monitor_drift (the
inference log on S3 too), build_rag_index → evaluate_rag (on the Chroma server), and finetune_llm.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import httpx
import pytest
import yaml
from metaflow import Run, namespace

from llmops.registry import Registry
from tests.conftest import REPO, find_free_port, run_flow, serve_bento

# several flow runs in one test (or fixture) on a 2-core machine
pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1200)]
BUCKET, PREFIX = "llmops", "metaflow"
FLOWS = {
    "train_classifier.py": "TrainClassifierFlow",
    "monitor_drift.py": "MonitorDriftFlow",
    "build_rag_index.py": "BuildRagIndexFlow",
    "evaluate_rag.py": "EvaluateRagFlow",
    "finetune_llm.py": "FinetuneLlmFlow",
}
RAG_DOCS = ("gate.md", "registry.md")
# the RAG chain is about where the index and the artifacts live, not about the gate: a policy any
# sane index passes
RAG_POLICY = {"model": "rag", "metrics": {"hit_rate": {"min": 0.5}}}
# the `chroma` console script, run by this interpreter wherever its bin folder is
CHROMA_CLI = "import sys; from chromadb.cli.cli import app; sys.argv[0] = 'chroma'; sys.exit(app())"
SHIFTED = [f"{kind} {what}" for kind in ("mean", "worst") for what in
           ("radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity",
            "concave points", "symmetry", "fractal dimension")]  # fmt: skip


@dataclass
class FlowRun:
    result: subprocess.CompletedProcess | None  # None: not started, an earlier flow of its chain failed
    run_id: str | None

    def output(self) -> str:
        if self.result is None:
            return "not run: the flow before it in its chain failed"
        return self.result.stdout[-3000:] + self.result.stderr[-3000:]


@pytest.fixture(scope="module")
def s3_env(s3_server):
    """The moto endpoint for the flows this module starts (run_flow passes os.environ on) and
    for the Client API and boto3 here."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_server.items():
            patch.setenv(key, value)
        patch.delenv("LLMOPS_CHECKPOINT_ROOT", raising=False)  # checkpoints go beside the datastore
        yield s3_server


@pytest.fixture(scope="module")
def bucket(s3_env):
    return boto3.client("s3", endpoint_url=s3_env["METAFLOW_S3_ENDPOINT_URL"])


def keys_under(bucket, prefix: str) -> set[str]:
    pages = bucket.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def start(tmp: Path, flow: str, *args: str, top: tuple[str, ...] = (), env: dict | None = None) -> FlowRun:
    run_id_file = tmp / f"{flow}-{uuid.uuid4().hex[:6]}.run-id"
    result = run_flow(flow, *args, "--run-id-file", str(run_id_file), top=top, timeout=400, env=env)
    return FlowRun(result, run_id_file.read_text().strip() if run_id_file.exists() else None)


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
    """The RAG chain's LLMOPS_HOME: its chroma/ folder is the embedded store that must stay empty."""
    return tmp_path_factory.mktemp("llmops-home")


def ok(run: FlowRun) -> bool:
    return run.result is not None and run.result.returncode == 0


def classifier_chain(tmp: Path, names: dict[str, str]) -> dict[str, FlowRun]:
    """Train a champion, log shifted traffic for it to S3, and monitor that window."""
    from llmops.inference_log import InferenceLogger
    from llmops.registry import Registry
    from llmops.tabular.data import load_table
    from llmops.tabular.simulate import shift

    train = start(
        tmp, "train_classifier.py", "--models", "logistic_regression", "--model-name", names["model"]
    )
    if not ok(train):
        return {"train_classifier.py": train, "monitor_drift.py": FlowRun(None, None)}
    since = datetime.now(timezone.utc)
    version = Registry().get(names["model"]).version
    traffic = shift(load_table().sample(120, random_state=1), SHIFTED, 1.5).drop(columns=["target"])
    logger = InferenceLogger(names["log_dir"], names["model"], upload_interval=600)
    now = datetime.now(timezone.utc).isoformat()
    row = {"timestamp": now, "model": names["model"], "model_version": version, "prediction": 0}
    logger.log(
        [
            {**row, "request_id": f"req-{i // 10}", "row": i % 10, "features": features, "probability": 0.5}
            for i, features in enumerate(traffic.to_dict("records"))
        ]
    )
    assert logger.flush(30), "the inference log was not uploaded"
    logger.close()
    until = datetime.now(timezone.utc) + timedelta(seconds=1)
    monitor = start(
        tmp, "monitor_drift.py", "--model-name", names["model"], "--log-dir", names["log_dir"],
        "--since", since.isoformat(), "--until", until.isoformat(), "--retrain", "false",
    )  # fmt: skip
    return {"train_classifier.py": train, "monitor_drift.py": monitor}


def rag_chain(tmp: Path, names: dict[str, str]) -> dict[str, FlowRun]:
    """Index two docs files on the Chroma server, then evaluate and release the index on the golden
    questions about them; both flows are told only LLMOPS_CHROMA_URL."""
    docs = tmp / "docs"
    docs.mkdir()
    for name in RAG_DOCS:
        shutil.copy(REPO / "docs" / name, docs / name)
    texts = " ".join((docs / name).read_text() for name in RAG_DOCS)
    shipped = yaml.safe_load((REPO / "evals" / "rag_golden.yaml").read_text())
    about = [
        q
        for q in shipped["questions"]
        if {s.removeprefix("docs/") for s in q["sources"]} <= set(RAG_DOCS)
        and all(context in texts for context in q["reference_contexts"])  # still verbatim in the docs
    ][:4]
    assert len(about) >= 2, "the shipped golden set has too few questions on " + ", ".join(RAG_DOCS)
    golden, policy = tmp / "golden.yaml", tmp / "policy.yaml"
    golden.write_text(yaml.safe_dump({"version": 1, "questions": about}))
    policy.write_text(yaml.safe_dump(RAG_POLICY))
    env = {"LLMOPS_CHROMA_URL": names["chroma_url"], "LLMOPS_HOME": names["home"]}
    build = start(tmp, "build_rag_index.py", "--docs", str(docs), "--shards", "1", env=env)
    if not ok(build):
        return {"build_rag_index.py": build, "evaluate_rag.py": FlowRun(None, None)}
    evaluate = start(
        tmp, "evaluate_rag.py", "--golden", str(golden), "--release-name", names["release"],
        "--generators", "extractive", top=("--config", "policy", str(policy)), env=env,
    )  # fmt: skip
    return {"build_rag_index.py": build, "evaluate_rag.py": evaluate}


def finetune_chain(tmp: Path, names: dict[str, str]) -> dict[str, FlowRun]:
    """The tiny local model on the shipped dataset (the shipped config's all-linear LoRA fits its
    GPT-2 layers), the training cut to 10 steps: what is under test is where artifacts and
    checkpoints go, not what the model learns."""
    config = yaml.safe_load((REPO / "configs" / "finetune.yaml").read_text())
    config["optim"] |= {"max_steps": 10, "warmup_steps": 0, "batch_size": 4}
    config |= {"save_steps": 5, "max_length": 128, "max_new_tokens": 4, "max_eval_examples": 4}
    training = tmp / "training.yaml"
    training.write_text(yaml.safe_dump(config))
    run = start(
        tmp, "finetune_llm.py", "--release-name", names["llm"], "--base-model", "tiny",
        top=("--config", "training", str(training)),
    )  # fmt: skip
    return {"finetune_llm.py": run}


@pytest.fixture(scope="module")
def runs(s3_env, chroma_server, home, tmp_path_factory) -> dict:
    """{flow file: FlowRun} for the three chains run side by side, and the "names" they used."""
    tag = uuid.uuid4().hex[:8]
    names = {"model": f"s3-clf-{tag}", "release": f"s3-rag-{tag}", "llm": f"s3-llm-{tag}",
             "log_dir": f"s3://{BUCKET}/inference-log/{tag}", "chroma_url": chroma_server,
             "home": str(home)}  # fmt: skip
    chains = [classifier_chain, rag_chain, finetune_chain]  # a missing flow file fails its chain's tests
    with ThreadPoolExecutor(len(chains)) as pool:
        futures = [pool.submit(chain, tmp_path_factory.mktemp(chain.__name__), names) for chain in chains]
        done = {}
        for future in futures:
            done |= future.result()
    namespace(None)
    return done | {"names": names}


def flow_run(runs, flow: str) -> Run:
    run = runs[flow]
    assert ok(run), run.output()
    return Run(f"{FLOWS[flow]}/{run.run_id}")


@pytest.mark.parametrize("flow", list(FLOWS))
def test_every_artifact_and_task_record_lives_in_the_bucket(runs, bucket, flow):
    run = flow_run(runs, flow)
    assert run.successful
    flow_name, run_id = FLOWS[flow], run.id
    stored = keys_under(bucket, f"{PREFIX}/{flow_name}/")
    artifacts = 0
    for step in run:
        for task in step:
            task_key = f"{PREFIX}/{flow_name}/{run_id}/{step.id}/{task.id}/0.data.json"
            assert task_key in stored, f"{task_key} is not in s3://{BUCKET}"
            local = REPO / ".metaflow" / flow_name / run_id / step.id / task.id / "0.data.json"
            assert not local.exists(), f"{local} was written locally: the run did not use the S3 datastore"
            for artifact in task:
                content = f"{PREFIX}/{flow_name}/data/{artifact.sha[:2]}/{artifact.sha}"
                assert content in stored, f"{task.pathspec}/{artifact.id}: {content} is not in the bucket"
                artifacts += 1
    assert artifacts > 10
    cards = keys_under(bucket, f"{PREFIX}/mf.cards/{flow_name}/runs/{run_id}/")
    assert any(key.endswith(".html") for key in cards), f"no card of {run.pathspec} in the bucket"


def test_the_classifier_is_trained_gated_and_registered_from_s3(runs):
    from llmops.registry import Registry

    run = flow_run(runs, "train_classifier.py")
    end = run["end"].task
    assert run["evaluate"].task["gate_decision"].data["passed"]
    assert end["promoted"].data
    champion = Registry().get(runs["names"]["model"])
    assert champion.version == end["model_version"].data
    assert champion.metadata["run"] == run.pathspec
    model = run["select"].task["model"].data  # the fitted pipeline, read back from S3
    test_set = run["evaluate"].task["test_set"].data
    schema = run["start"].task["schema"].data
    predicted = model.predict(test_set[list(schema["features"])])
    assert (predicted == test_set[schema["target"]]).mean() >= 0.85


def test_the_monitor_reads_the_s3_inference_log_and_calls_for_retraining(runs):
    train = flow_run(runs, "train_classifier.py")
    run = flow_run(runs, "monitor_drift.py")
    end = run["end"].task
    assert len(end["window"].data) == 120
    assert end["champion_version"].data == train["end"].task["model_version"].data
    drifted = {c["column"] for c in end["drift_report"].data["columns"] if c["drifted"]}
    assert len(drifted & set(SHIFTED)) >= 0.8 * len(SHIFTED), drifted
    assert end["decision"].data["retrain"]
    assert end["retrain_outcome"].data == "needed, but --retrain false was given"


def test_the_rag_index_and_its_evaluation_run_on_s3(runs):
    build = flow_run(runs, "build_rag_index.py")
    evaluate = flow_run(runs, "evaluate_rag.py")
    write = build["write"].task
    assert write["corpus_stats"].data["files"] == 2
    assert write["embedded_chunks"].data == len({c["content_hash"] for c in write["chunks"].data}) > 0
    embeddings = build["embed"].task["shard_embeddings"].data  # a float32 array, read back from S3
    assert embeddings.shape == (write["embedded_chunks"].data, 384)
    assert evaluate["start"].task["index_version"].data == write["index_version"].data
    scores = evaluate["evaluate"].task["eval_scores"].data
    assert {"hit_rate", "mrr", "reference_coverage", "context_precision", "rouge_l"} <= set(scores)
    assert scores["hit_rate"] > 0


def _chroma_client(url):
    from llmops.rag.index import chroma_client

    return chroma_client(url)


def test_the_rag_flows_build_and_release_the_index_on_the_chroma_server(runs, chroma_server, home):
    built, evaluated = flow_run(runs, "build_rag_index.py"), flow_run(runs, "evaluate_rag.py")
    index = built["end"].task["index_version"].data
    assert built["start"].task["chroma_location"].data == chroma_server
    assert evaluated["start"].task["chroma_location"].data == chroma_server
    assert evaluated["start"].task["index_version"].data == index  # the newest index on the server
    assert evaluated["end"].task["promoted"].data, evaluated["end"].task["promotion_note"].data
    assert Registry().get(runs["names"]["release"]).read_json("release.json")["chroma"] == chroma_server

    client = _chroma_client(chroma_server)
    assert index in [c.name for c in client.list_collections()]
    collection = client.get_collection(index)
    assert collection.count() == built["write"].task["corpus_stats"].data["chunks"] > 0
    assert {m["source"] for m in collection.get(include=["metadatas"])["metadatas"]} == set(RAG_DOCS)
    assert not (home / "chroma").exists()  # the embedded store got nothing


def test_the_rag_service_answers_from_the_chroma_server_index(runs, chroma_server, home, tmp_path):
    index = flow_run(runs, "build_rag_index.py")["end"].task["index_version"].data
    env = {"LLMOPS_RAG_RELEASE": runs["names"]["release"], "LLMOPS_CHROMA_URL": chroma_server,
           "LLMOPS_HOME": str(home)}  # fmt: skip
    with serve_bento("services.rag:Rag", tmp_path, **env) as client:
        reply = client.post("/query", json={"question": "How does the gate compare with the champion?"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["versions"]["index_version"] == index and body["sources"]
    stored = _chroma_client(chroma_server).get_collection(index)
    for source in body["sources"]:
        assert source["path"] in RAG_DOCS
        found = stored.get(where={"$and": [{"source": source["path"]}, {"position": source["chunk"]}]})
        assert found["documents"] == [source["text"]]  # the very chunk the server holds
    assert chroma_server in "".join(p.read_text() for p in tmp_path.glob("server-*.log"))
    assert not (home / "chroma").exists()


def test_chroma_location_takes_a_url_or_a_folder_over_the_setting(runs, chroma_server, tmp_path, monkeypatch):
    """What the flows do with ``--chroma``: ``chroma_location`` takes a server URL or a folder,
    and either overrides LLMOPS_CHROMA_URL (checked at the function the flows call, not by a run)."""
    from llmops.rag.index import chroma_location, list_indexes

    built = flow_run(runs, "build_rag_index.py")
    monkeypatch.delenv("LLMOPS_CHROMA_URL", raising=False)
    assert chroma_location(chroma_server) == chroma_server
    indexes = list_indexes(_chroma_client(chroma_location(chroma_server)))
    assert built["end"].task["index_version"].data in [m["index_version"] for m in indexes]
    monkeypatch.setenv("LLMOPS_CHROMA_URL", chroma_server)
    assert chroma_location(str(tmp_path / "store")) == str((tmp_path / "store").resolve())
    assert chroma_location() == chroma_server


def test_the_finetune_flow_runs_on_s3_with_checkpoints_beside_the_datastore(runs, bucket):
    run = flow_run(runs, "finetune_llm.py")
    report = run["train"].task["training_report"].data
    assert report["steps"] == 10
    assert report["checkpoints"].startswith(f"s3://{BUCKET}/{PREFIX}/llmops/checkpoints/")
    key = report["checkpoints"].removeprefix(f"s3://{BUCKET}/")
    assert any("/checkpoint-10/" in k for k in keys_under(bucket, key + "/")), "no checkpoint in the bucket"
    adapter = run["train"].task["adapter_files"].data
    assert any(name.endswith("adapter_config.json") for name in adapter)
    scores = run["evaluate"].task["eval_scores"].data
    assert {"eval_loss", "perplexity", "perplexity_ratio"} <= set(scores)
