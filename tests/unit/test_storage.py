"""llmops.storage against a real S3 API (moto_server on 127.0.0.1) and a local folder."""

import uuid
from pathlib import Path

import boto3
import pytest

from llmops.storage import (
    LocalStore,
    S3Store,
    StorageError,
    StorageNotFound,
    check_key,
    is_s3_url,
    open_store,
    parse_s3_url,
)


@pytest.fixture(params=["s3", "local"])
def store(request, tmp_path):
    """An empty store of each kind, under a prefix no other test uses."""
    if request.param == "s3":
        request.getfixturevalue("s3_env")
        return open_store(f"s3://llmops/tests/{uuid.uuid4().hex[:8]}")
    return open_store(tmp_path / "store")


def test_urls_and_keys_are_checked_naming_the_field():
    assert parse_s3_url("s3://llmops/a/b/") == ("llmops", "a/b")
    assert parse_s3_url("s3://llmops") == ("llmops", "")
    for url, problem in [
        ("s3://Bad_Bucket/x", "not a valid S3 bucket name"),
        ("s3://ab/x", "not a valid S3 bucket name"),
        ("s3://llmops/a/../b", "must not contain '..'"),
        ("s3://llmops/a//b", "empty segments"),
        ("s3://llmops/a?versionId=1", "query"),
        ("http://llmops/a", "not an s3://bucket/prefix URL"),
    ]:
        with pytest.raises(StorageError, match=problem) as caught:
            parse_s3_url(url, "--destination")
        assert str(caught.value).startswith("--destination: ")
    for key in ("../x", "a/../../x", "/etc/passwd", "a\\b"):
        with pytest.raises(StorageError, match="key"):
            check_key(key, "key")
    with pytest.raises(StorageError, match="url: 'gs://b/x': only s3:// URLs and local folders"):
        open_store("gs://b/x")
    # a settings field typed Path collapses s3://b/p to s3:/b/p: still the same S3 location
    assert is_s3_url(Path("s3://llmops/log")) and not is_s3_url(Path("s3-like/folder"))
    collapsed = open_store(Path("s3://llmops/log"))
    assert isinstance(collapsed, S3Store) and collapsed.url == "s3://llmops/log"
    assert isinstance(open_store("relative/folder"), LocalStore)


def test_bytes_files_folders_and_listing_round_trip(store, tmp_path):
    store.write_bytes("a/one.json", b'{"x": 1}')
    source = tmp_path / "src"
    (source / "nested").mkdir(parents=True)
    (source / "top.bin").write_bytes(bytes(range(256)) * 100)
    (source / "nested" / "leaf.txt").write_text("leaf")
    store.upload_file(source / "top.bin", "b/top.bin")
    assert store.upload_dir(source, "c") == ["c/nested/leaf.txt", "c/top.bin"]

    assert store.read_bytes("a/one.json") == b'{"x": 1}'
    assert store.list() == ["a/one.json", "b/top.bin", "c/nested/leaf.txt", "c/top.bin"]
    assert store.list("c") == ["c/nested/leaf.txt", "c/top.bin"]
    assert store.list("c/nest") == []  # a prefix is a folder, not the start of a name
    assert store.folders() == ["a", "b", "c"] and store.folders("c") == ["nested"]
    assert store.exists("b/top.bin") and not store.exists("b/nope")
    assert store.read_head("b/top.bin") == 25600

    fetched = store.download_file("b/top.bin", tmp_path / "out" / "top.bin")
    assert fetched.read_bytes() == (source / "top.bin").read_bytes()
    copied = store.download_dir("c", tmp_path / "copy")
    assert sorted(p.relative_to(tmp_path / "copy").as_posix() for p in copied) == [
        "nested/leaf.txt",
        "top.bin",
    ]
    assert (tmp_path / "copy" / "nested" / "leaf.txt").read_text() == "leaf"

    child = store.child("c/nested")
    assert child.list() == ["leaf.txt"] and child.url == store.join("c/nested")
    store.write_bytes("a/one.json", b"replaced")  # writes replace whole objects
    assert store.read_bytes("a/one.json") == b"replaced"


def test_missing_keys_and_escapes_are_clear_errors(store, tmp_path):
    with pytest.raises(StorageNotFound, match="no such"):
        store.read_bytes("nothing/here.json")
    with pytest.raises(StorageNotFound):
        store.download_file("nothing/here.json", tmp_path / "x")
    with pytest.raises(StorageNotFound, match="nothing there"):
        store.download_dir("nothing", tmp_path / "y")
    for key in ("../outside.txt", "a/../../outside.txt"):
        with pytest.raises(StorageError, match=r"must not contain '\.\.'"):
            store.write_bytes(key, b"x")
    assert not (tmp_path / "outside.txt").exists()
    assert store.list() == []


def test_objects_named_with_dot_dot_in_a_bucket_are_never_downloaded_outside(s3_env, tmp_path):
    prefix = f"tests/{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"])
    s3.put_object(Bucket="llmops", Key=f"{prefix}/evil/../../escaped.txt", Body=b"x")
    with pytest.raises(StorageError, match=r"must not contain '\.\.'"):
        open_store(f"s3://llmops/{prefix}").download_dir("evil", tmp_path / "in")
    assert not any(tmp_path.rglob("escaped.txt"))


def test_metaflow_endpoint_is_the_fallback_and_a_missing_bucket_is_named(s3_env, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")  # only METAFLOW_S3_ENDPOINT_URL is left
    key = f"tests/{uuid.uuid4().hex[:8]}/via-metaflow.txt"
    open_store("s3://llmops").write_bytes(key, b"ok")
    assert open_store("s3://llmops").read_bytes(key) == b"ok"
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        open_store("s3://no-such-bucket/x").write_bytes("a.txt", b"x")
