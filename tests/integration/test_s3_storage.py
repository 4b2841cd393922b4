"""The registry, the RAG index and the inference log with S3 as their storage (moto_server on
127.0.0.1): a model exported here is imported into a fresh BentoML home by `llmops models import`
in another process and loads there; an index is restored into a fresh Chroma store and answers
the same queries; inference-log rows go to S3 in a few objects and read back like a folder's."""

import io
import json
import os
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest

from llmops.inference_log import InferenceLogger, read_log
from llmops.registry import RegistryError
from llmops.registry_transfer import describe, export_version, import_version
from llmops.storage import open_store
from llmops.tabular.data import load_table
from tests.classifier_release import fit_classifier, register_passing_classifier
from tests.conftest import REPO, serve_bento

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def prefix() -> str:
    return f"s3://llmops/tests/{uuid.uuid4().hex[:8]}"


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120, env=env
    )


# ---- the registry ---------------------------------------------------------------------------

# run in the fresh home: the champion, its lineage and its predictions on five rows
LOAD_AND_PREDICT = """
import json, sys
from llmops.tabular.classifier import load_model
from llmops.tabular.data import load_table
from llmops.registry import Registry
version = Registry().get(sys.argv[1])
predictions = load_model(version.path).predict(load_table().drop(columns="target").head(5))
print(json.dumps({"version": version.version, "metadata": version.metadata, "labels": version.labels,
                  "aliases": Registry().aliases(sys.argv[1]), "predictions": predictions.tolist()}))
"""


@pytest.fixture(scope="module")
def classifier():
    """A small logistic regression registered and promoted in the session's BentoML home."""
    model, schema = fit_classifier()
    version = register_passing_classifier(
        "s3-" + uuid.uuid4().hex[:8],
        model,
        schema,
        run_pathspec="TrainClassifierFlow/42",
        metrics={"accuracy": 0.95},
        policy_version="policy-test",
        dataset_version="ds-s3test",
    )
    expected = model.predict(load_table().drop(columns="target").head(5)).tolist()
    return version, expected


def test_a_model_exported_to_s3_is_imported_into_a_fresh_home_and_loads(classifier, s3_env, tmp_path):
    version, expected = classifier
    destination = prefix()
    env = os.environ | s3_env | {"COLUMNS": "200"}
    exported = run("-m", "llmops.cli", "models", "export", version.name, destination, env=env)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    archive = f"{destination}/{version.name}-{version.version}.bentomodel"
    assert f"exported {version.tag} (aliases: champion) to {archive}" in exported.stdout
    manifest = json.loads(
        open_store(destination).read_bytes(f"{version.name}-{version.version}.manifest.json")
    )
    assert manifest["aliases"] == ["champion"] and manifest["metadata"]["run"] == "TrainClassifierFlow/42"

    fresh = env | {"BENTOML_HOME": str(tmp_path / "fresh-home")}
    imported = run("-m", "llmops.cli", "models", "import", archive, "--promote", env=fresh)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert f"imported {version.tag}" in imported.stdout
    assert f"{version.name}@champion: (unset) -> {version.version}" in imported.stdout

    loaded = run("-c", LOAD_AND_PREDICT, version.name, env=fresh)
    assert loaded.returncode == 0, loaded.stderr
    there = json.loads(loaded.stdout)
    assert there["version"] == version.version
    assert there["metadata"] == json.loads(json.dumps(version.metadata))  # every lineage entry
    assert there["labels"] == version.labels
    assert there["aliases"] == {"champion": version.version}
    assert there["predictions"] == expected


def test_corrupt_foreign_and_conflicting_archives_are_refused(classifier, tmp_path):
    version, _ = classifier
    folder = tmp_path / "exports"
    archive_url, _ = export_version(version.name, version.version, str(folder))
    archive = Path(archive_url)
    assert archive.name == f"{version.name}-{version.version}.bentomodel"

    result = import_version(archive_url)  # already here with the same files: a no-op
    assert not result.imported and result.version.version == version.version
    assert "already in the store with the same files: nothing imported" in describe(result)

    original = archive.read_bytes()
    archive.write_bytes(original[:-200] + bytes(200))
    with pytest.raises(RegistryError, match="SHA-256 differs from its manifest"):
        import_version(archive_url)
    archive.write_bytes(original)

    foreign = tmp_path / "foreign" / "thing.bentomodel"
    foreign.parent.mkdir()
    foreign.write_bytes(b"not an archive at all")
    with pytest.raises(RegistryError, match=r"not a BentoML model archive \(.bentomodel, xz tar\)"):
        import_version(str(foreign))

    def repack(name: str, members: dict[str, bytes]) -> str:
        path = tmp_path / "crafted" / name
        path.parent.mkdir(exist_ok=True)
        with tarfile.open(path, "w:xz") as tar:
            for member, payload in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        return str(path)

    model_yaml = (version.path / "model.yaml").read_bytes()
    with pytest.raises(RegistryError, match="a path outside the archive"):
        import_version(repack("escape.bentomodel", {"./model.yaml": model_yaml, "../../evil.txt": b"x"}))
    assert not (tmp_path / "evil.txt").exists()
    with pytest.raises(RegistryError, match="pickles are never imported"):
        import_version(
            repack("pickle.bentomodel", {"./model.yaml": model_yaml, "./custom_objects.pkl": b"x"})
        )
    with pytest.raises(RegistryError, match=r"no model\.yaml"):
        import_version(repack("empty.bentomodel", {"./weights.bin": b"x"}))
    changed = {"./model.yaml": model_yaml, "./model.skops": b"other weights"}
    with pytest.raises(RegistryError, match="already in the store with different files"):
        import_version(repack("changed.bentomodel", changed))
    with pytest.raises(RegistryError, match=r"url: .* must name a \.bentomodel archive"):
        import_version(str(folder))


# ---- the RAG index --------------------------------------------------------------------------


@pytest.fixture
def index(tmp_path):
    """A finished index of 40 chunks with random 16-d vectors in a local Chroma folder."""
    from llmops.rag.chunking import Chunk, ChunkingConfig
    from llmops.rag.index import IndexInfo, chroma_client, index_version, write_index

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 16)).astype(np.float32)
    chunks = [
        Chunk(id=f"c{i:02d}", text=f"chunk number {i}", source=f"doc{i % 4}.md", position=i, start=10 * i,
              doc_hash=f"d{i % 4}", content_hash=f"h{i}", kind="markdown")
        for i in range(40)
    ]  # fmt: skip
    chunking = ChunkingConfig(chunk_size=200, chunk_overlap=20)
    info = IndexInfo(
        version=index_version("corpus-test", chunking, "model-test"),
        corpus_version="corpus-test",
        chunking=chunking,
        embedding_model="test-model",
        embedding_model_id="model-test",
        chunks=len(chunks),
    )
    client = chroma_client(str(tmp_path / "source-chroma"))
    write_index(client, info, chunks, vectors)
    return client, info, vectors


def test_an_index_exported_to_s3_is_restored_into_another_store(index, s3_env, tmp_path):
    from llmops.rag.index import chroma_client, open_index
    from llmops.rag.index_transfer import IndexTransferError, export_index, import_index

    client, info, vectors = index
    destination = prefix()
    url = export_index(client, info.version, destination, page=16)  # three pages
    assert url == f"{destination}/{info.version}"
    assert sorted(open_store(url).list()) == ["index.json", "records.parquet"]

    target = tmp_path / "restored-chroma"
    env = os.environ | s3_env | {"COLUMNS": "200"}
    listed = run("-m", "llmops.cli", "index", "list", destination, env=env)
    assert listed.returncode == 0 and info.version in listed.stdout and "corpus-test" in listed.stdout
    restored = run("-m", "llmops.cli", "index", "import", url, "--chroma", str(target), env=env)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert f"{info.version} (40 chunks) in {target}: imported" in restored.stdout

    there = open_index(chroma_client(str(target)), info.version)
    source = open_index(client, info.version)
    assert there.metadata == source.metadata and there.configuration["hnsw"]["space"] == "cosine"
    ids, include = [f"c{i:02d}" for i in range(40)], ["embeddings", "documents", "metadatas"]
    got, before = there.get(ids=ids, include=include), source.get(ids=ids, include=include)
    # float32 as the source holds them; Chroma's cosine space may move the last bit on every add
    assert np.allclose(got["embeddings"], before["embeddings"], rtol=1e-6, atol=1e-7)
    assert np.allclose(got["embeddings"], vectors, rtol=1e-6, atol=1e-7)
    assert got["metadatas"] == before["metadatas"]
    assert got["documents"][7] == "chunk number 7" and got["metadatas"][7]["source"] == "doc3.md"
    hits = there.query(query_embeddings=vectors[[5, 23]], n_results=3)
    assert [ids[0] for ids in hits["ids"]] == ["c05", "c23"]

    assert import_index(chroma_client(str(target)), url).count() == 40  # the same index: kept as is
    other = chroma_client(str(tmp_path / "other-chroma"))
    other.create_collection(info.version, metadata={"index_version": info.version, "chunks": 1})
    with pytest.raises(IndexTransferError, match="already has a different collection"):
        import_index(other, url)
    assert other.get_collection(info.version).count() == 0  # untouched
    with pytest.raises(IndexTransferError, match=r"does not exist \(not an index export\)"):
        import_index(other, destination)


def test_a_tampered_index_export_is_refused(index, tmp_path):
    from llmops.rag.index import chroma_client
    from llmops.rag.index_transfer import IndexTransferError, export_index, import_index

    client, info, _ = index
    url = export_index(client, info.version, str(tmp_path / "exports"))
    records = Path(url) / "records.parquet"
    records.write_bytes(records.read_bytes()[:-10])
    target = chroma_client(str(tmp_path / "target"))
    with pytest.raises(IndexTransferError, match="SHA-256 differs"):
        import_index(target, url)
    assert not target.list_collections()  # no scratch left behind either


# ---- the inference log ----------------------------------------------------------------------


def log_rows(request_id: str, timestamp: str, n: int = 3) -> list[dict]:
    return [
        {"request_id": request_id, "row": i, "timestamp": timestamp, "model": "clf", "model_version": "v1",
         "features": {"mean radius": 10.0 + i, "colour": "red"}, "prediction": "benign", "probability": 0.7}
        for i in range(n)
    ]  # fmt: skip


def test_inference_log_rows_go_to_s3_in_few_objects_and_read_back_like_a_folder(
    s3_env, tmp_path, monkeypatch
):
    root = prefix()
    batches = [log_rows(f"r{i}", f"2024-03-01T{10 + i // 25}:{i % 25:02d}:00+00:00") for i in range(50)] + [
        log_rows("next-day", "2024-03-02T00:30:00+00:00")
    ]
    # as the services pass it: a settings field typed Path has collapsed s3:// to s3:/
    remote = InferenceLogger(Path(root), "clf", upload_interval=60)
    local = InferenceLogger(tmp_path, "clf")
    for batch in batches:
        remote.log(batch)
        local.log(batch)
    assert remote.flush() and local.flush()
    objects = open_store(root).list("clf")
    assert len(objects) == 3  # one per hour of rows, not one per request
    assert all(
        name.startswith(("clf/2024-03-01/10-", "clf/2024-03-01/11-", "clf/2024-03-02/00-"))
        for name in objects
    )

    window = {"since": "2024-03-01T10:20:00", "until": "2024-03-01T11:05:00"}
    from_s3, from_folder = read_log(root, "clf", **window), read_log(tmp_path, "clf", **window)
    pd.testing.assert_frame_equal(from_s3, from_folder)
    assert from_s3["request_id"].drop_duplicates().tolist() == [f"r{i}" for i in range(20, 30)]
    assert len(read_log(root, "clf")) == 153

    remote.log(log_rows("late", "2024-03-02T00:40:00+00:00"))
    remote.close()  # close uploads what waits, as a new object beside the others
    local.close()
    assert len(open_store(root).list("clf")) == 4
    monkeypatch.setenv("LLMOPS_INFERENCE_LOG_DIR", root)  # how the monitor flow finds it by default
    assert (
        read_log(None, "clf", since="2024-03-02T00:00:00")["request_id"].tolist()
        == ["next-day"] * 3 + ["late"] * 3
    )


def test_the_classifier_service_logs_to_s3_unchanged(classifier, s3_env, tmp_path):
    """`bentoml serve` with LLMOPS_INFERENCE_LOG_DIR=s3://...: the service's settings type it as a
    Path; the rows still reach S3 (on the upload interval, while it serves) and read back."""
    version, expected = classifier
    root = prefix()
    features = load_table().drop(columns="target").head(5)
    body = {
        "records": [
            {k: (None if pd.isna(v) else v) for k, v in r.items()} for r in features.to_dict("records")
        ]
    }
    with serve_bento(
        "services.classifier:Classifier", tmp_path, LLMOPS_CLASSIFIER_RELEASE=version.name,
        LLMOPS_INFERENCE_LOG_DIR=root, LLMOPS_INFERENCE_LOG_UPLOAD_S="0.5", **s3_env,
    ) as client:  # fmt: skip
        for _ in range(3):
            response = client.post("/predict", json=body)
            assert response.status_code == 200, response.text
        deadline = time.monotonic() + 20
        while len(logged := read_log(root, version.name)) < 15 and time.monotonic() < deadline:
            time.sleep(0.2)
    assert len(logged) == 15 and set(logged["model_version"]) == {version.version}
    assert logged["prediction"].tolist()[:5] == [str(p) for p in expected]


def test_inference_log_uploads_on_its_interval_and_retries_a_failed_upload(s3_env):
    bucket = "later-" + uuid.uuid4().hex[:8]
    logger = InferenceLogger(f"s3://{bucket}/log", "clf", upload_interval=0.2)
    logger.log(log_rows("waits", "2024-03-01T10:00:00+00:00"))
    assert logger.flush()  # the upload fails: no bucket yet; the rows wait in memory
    assert logger.alive and logger.dropped == 0
    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"]).create_bucket(Bucket=bucket)
    deadline = time.monotonic() + 10  # no flush: the interval alone uploads them
    while read_log(f"s3://{bucket}/log", "clf").empty and time.monotonic() < deadline:
        time.sleep(0.1)
    assert read_log(f"s3://{bucket}/log", "clf")["request_id"].tolist() == ["waits"] * 3
    logger.close()
