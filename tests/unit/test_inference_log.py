import json
import multiprocessing as mp
import os
import threading
import time
from datetime import datetime, timezone

import pandas as pd
import pytest

from llmops.inference_log import InferenceLogger, default_log_root, read_log, utc_now
from llmops.settings import SettingsError
from llmops.storage import StorageError


def rows(request_id, n=2, timestamp=None, **features):
    return [
        {
            "request_id": request_id,
            "row": i,
            "timestamp": timestamp or utc_now(),
            "model": "clf",
            "model_version": "v1",
            "features": {"mean radius": 10.0 + i, "colour": "red", **features},
            "prediction": "benign",
            "probability": 0.75,
        }
        for i in range(n)
    ]


def test_rows_land_in_an_hourly_file_per_process(tmp_path):
    logger = InferenceLogger(tmp_path, "clf", flush_interval=60)
    logger.log(rows("a", 3))
    assert logger.flush()
    (file,) = tmp_path.glob("clf/*/*.jsonl")
    now = datetime.now(timezone.utc)
    assert file.parent.name == now.strftime("%Y-%m-%d")
    assert file.name == f"{now:%H}-{os.getpid()}.jsonl"
    written = [json.loads(line) for line in file.read_text().splitlines()]
    assert [r["row"] for r in written] == [0, 1, 2]
    assert written[0]["features"] == {"mean radius": 10.0, "colour": "red"}
    logger.close()


def test_rows_are_written_without_an_explicit_flush(tmp_path):
    logger = InferenceLogger(tmp_path, "clf", flush_interval=0.05)
    logger.log(rows("a"))
    deadline = time.monotonic() + 5
    while read_log(tmp_path, "clf").empty and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(read_log(tmp_path, "clf")) == 2
    logger.close()


def test_the_row_timestamp_picks_the_file(tmp_path):
    logger = InferenceLogger(tmp_path, "clf")
    logger.log(rows("old", timestamp="2024-03-01T23:59:59.500000+00:00"))
    logger.log(rows("new", timestamp="2024-03-02T00:00:00+00:00"))
    logger.close()
    files = {str(p.relative_to(tmp_path / "clf")) for p in tmp_path.glob("clf/*/*")}
    assert files == {f"2024-03-01/23-{os.getpid()}.jsonl", f"2024-03-02/00-{os.getpid()}.jsonl"}


def _log_in_child(root, request_id):
    logger = InferenceLogger(root, "clf")
    logger.log(rows(request_id, 5))
    # no close(): the atexit hook must write the rows when the process ends


def test_each_process_writes_its_own_file_and_exit_flushes(tmp_path):
    ctx = mp.get_context("spawn")
    children = [ctx.Process(target=_log_in_child, args=(tmp_path, f"p{i}")) for i in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    assert len(list(tmp_path.glob("clf/*/*.jsonl"))) == 3
    frame = read_log(tmp_path, "clf")
    assert frame.groupby("request_id")["row"].apply(list).to_dict() == {
        f"p{i}": [0, 1, 2, 3, 4] for i in range(3)
    }


def test_read_log_round_trip_and_window(tmp_path):
    logger = InferenceLogger(tmp_path, "clf")
    logger.log(rows("a", timestamp="2024-03-01T10:00:00+00:00"))
    logger.log(rows("b", timestamp="2024-03-01T11:30:00+00:00", prediction="x"))
    logger.log(rows("c", timestamp="2024-03-03T09:00:00+00:00"))
    logger.close()

    frame = read_log(tmp_path, "clf")
    assert list(frame["request_id"]) == ["a", "a", "b", "b", "c", "c"]
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert list(frame["mean radius"]) == [10.0, 11.0] * 3
    # a feature named like a row field does not overwrite it
    assert list(frame["prediction"]) == ["benign"] * 6
    assert frame["features.prediction"].tolist()[2:4] == ["x", "x"]

    window = read_log(tmp_path, "clf", since="2024-03-01T11:00:00", until=datetime(2024, 3, 3, 9, 0))
    assert list(window["request_id"]) == ["b", "b"]  # since inclusive, until exclusive


def test_read_log_gives_the_champions_rows_unless_asked_for_the_shadows(tmp_path):
    """A shadow challenger's rows share the champion's request ids; the frame has no role column,
    so only the champion's rows are traffic unless ``roles`` asks (a row without a role is the
    champion's: written before roles existed)."""
    logger = InferenceLogger(tmp_path, "clf")
    logger.log(rows("old", timestamp="2024-03-01T10:00:00+00:00"))
    logger.log([r | {"role": "champion"} for r in rows("a", timestamp="2024-03-01T10:01:00+00:00")])
    shadow = rows("a", timestamp="2024-03-01T10:01:01+00:00")
    logger.log([r | {"role": "shadow", "model_version": "v2"} for r in shadow])
    logger.close()
    assert list(read_log(tmp_path, "clf")["request_id"]) == ["old", "old", "a", "a"]
    shadow = read_log(tmp_path, "clf", roles=["shadow"])
    assert list(shadow["request_id"]) == ["a", "a"] and set(shadow["model_version"]) == {"v2"}
    assert len(read_log(tmp_path, "clf", roles=["champion", "shadow"])) == 6


def test_read_log_skips_a_torn_last_line(tmp_path):
    logger = InferenceLogger(tmp_path, "clf")
    logger.log(rows("a", timestamp="2024-03-01T10:00:00+00:00"))
    logger.close()
    (file,) = tmp_path.glob("clf/*/*.jsonl")
    with open(file, "a") as handle:
        handle.write('{"request_id": "torn", "ro')
    assert list(read_log(tmp_path, "clf")["request_id"]) == ["a", "a"]


def test_close_writes_everything_and_later_rows_are_ignored(tmp_path):
    logger = InferenceLogger(tmp_path, "clf", flush_interval=60)
    for i in range(100):
        logger.log(rows(f"r{i}"))
    logger.close()
    assert not logger.alive
    logger.log(rows("late"))  # after close: dropped silently, never raises
    logger.close()  # idempotent
    assert len(read_log(tmp_path, "clf")) == 200


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path):
    logger = InferenceLogger(tmp_path, "clf", max_pending=1)
    disk_is_slow, buffer = threading.Event(), logger._buffer
    logger._buffer = lambda *args: (disk_is_slow.wait(), buffer(*args))[1]
    logger.log(rows("taken by the writer"))
    while not logger._queue.empty():
        time.sleep(0.01)
    logger.log(rows("waits in the queue"))
    started = time.monotonic()
    logger.log(rows("dropped", n=3))
    assert time.monotonic() - started < 0.5
    assert logger.dropped == 3
    disk_is_slow.set()
    logger.close()
    assert set(read_log(tmp_path, "clf")["request_id"]) == {"taken by the writer", "waits in the queue"}


def test_a_failed_write_stays_buffered_and_is_retried(tmp_path, caplog):
    logger = InferenceLogger(tmp_path, "clf", flush_interval=0.05)
    append, calls = logger.store.append_bytes, []

    def broken_once(key, data):
        calls.append(key)
        if len(calls) == 1:
            raise OSError("disk full")
        append(key, data)

    logger.store.append_bytes = broken_once
    logger.log(rows("kept", 3))
    assert logger.flush()  # the first attempt fails: the rows stay buffered
    assert read_log(tmp_path, "clf").empty
    deadline = time.monotonic() + 5
    while read_log(tmp_path, "clf").empty and time.monotonic() < deadline:
        time.sleep(0.02)
    logger.close()
    assert read_log(tmp_path, "clf")["request_id"].tolist() == ["kept"] * 3
    assert logger.dropped == 0 and len(calls) == 2
    assert "write failed, will retry" in caplog.text


def test_empty_log_has_the_row_columns(tmp_path):
    frame = read_log(tmp_path, "nothing-yet")
    assert frame.empty
    assert {"request_id", "row", "timestamp", "prediction", "probability"} <= set(frame.columns)


def test_default_root_and_bad_names(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMOPS_INFERENCE_LOG_DIR", str(tmp_path / "x"))
    assert default_log_root() == tmp_path / "x"
    monkeypatch.setenv("LLMOPS_INFERENCE_LOG_DIR", "s3://bucket/log")
    assert default_log_root() == "s3://bucket/log"
    monkeypatch.delenv("LLMOPS_INFERENCE_LOG_DIR")
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    assert default_log_root() == tmp_path / "home" / "inference-log"
    monkeypatch.delenv("LLMOPS_HOME")
    monkeypatch.chdir(tmp_path)
    assert default_log_root() == tmp_path.resolve() / ".llmops" / "inference-log"
    with pytest.raises(ValueError, match="model_name"):
        InferenceLogger(tmp_path, "../escape")
    assert isinstance(read_log(tmp_path, "clf"), pd.DataFrame)


# ---- durable mode -------------------------------------------------------------------------------


def test_durable_rows_are_in_the_hourly_file_when_log_returns(tmp_path):
    logger = InferenceLogger(tmp_path, "clf", flush_interval=60, durable=True)
    logger.log(rows("a", 3))
    (file,) = tmp_path.glob("clf/*/*.jsonl")  # no flush, no close: already there
    now = datetime.now(timezone.utc)
    assert file.relative_to(tmp_path / "clf").as_posix() == f"{now:%Y-%m-%d}/{now:%H}-{os.getpid()}.jsonl"
    assert [json.loads(line)["row"] for line in file.read_text().splitlines()] == [0, 1, 2]
    assert logger.alive and not logger._thread.is_alive()  # no writer thread to die or fall behind
    logger.log(rows("old", timestamp="2024-03-01T23:59:59+00:00"))  # the row's hour picks the file
    assert (tmp_path / "clf" / "2024-03-01" / f"23-{os.getpid()}.jsonl").is_file()
    assert logger.flush()
    logger.close()
    assert not logger.alive
    logger.log(rows("after close"))  # an answer still leaving during shutdown is still logged
    assert set(read_log(tmp_path, "clf")["request_id"]) == {"a", "old", "after close"}


def test_durable_appends_of_concurrent_requests_never_interleave(tmp_path):
    logger = InferenceLogger(tmp_path, "clf", durable=True)
    # long lines: each request's append spans several pages of the file
    big = {"note": "x" * 20_000}

    def serve(thread):
        for i in range(20):
            logger.log(rows(f"t{thread}-{i}", 4, **big))

    threads = [threading.Thread(target=serve, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (file,) = tmp_path.glob("clf/*/*.jsonl")
    written = [json.loads(line) for line in file.read_text().splitlines()]  # every line whole
    assert len(written) == 8 * 20 * 4
    for start in range(0, len(written), 4):  # each request's rows together, in order
        batch = written[start : start + 4]
        assert {r["request_id"] for r in batch} == {batch[0]["request_id"]}
        assert [r["row"] for r in batch] == [0, 1, 2, 3]


def test_a_durable_write_that_fails_raises_instead_of_answering_unlogged(tmp_path):
    logger = InferenceLogger(tmp_path, "clf", durable=True)

    def disk_full(key, data):
        raise OSError(28, "No space left on device")

    logger.store.append_bytes = disk_full
    with pytest.raises(StorageError, match=r"cannot write .durable log.: .* No space left on device"):
        logger.log(rows("lost"))
    logger.close()


def test_durable_is_refused_with_an_s3_root_naming_both_settings(tmp_path):
    with pytest.raises(
        SettingsError, match=r"LLMOPS_LOG_DURABLE=true .* LLMOPS_INFERENCE_LOG_DIR is s3://bucket"
    ):
        InferenceLogger("s3://bucket/log", "clf", durable=True)


def test_durable_is_read_from_the_setting_and_off_by_default(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMOPS_LOG_DURABLE", raising=False)
    loggers = [InferenceLogger(tmp_path, "clf")]
    for text in ("true", "1", "false", "true"):
        monkeypatch.setenv("LLMOPS_LOG_DURABLE", text)
        loggers.append(InferenceLogger(tmp_path, "clf"))
    loggers.append(InferenceLogger(tmp_path, "clf", durable=False))  # the argument over the setting
    assert [logger.durable for logger in loggers] == [False, True, True, False, True, False]
    with pytest.raises(SettingsError, match=r"LLMOPS_LOG_DURABLE.*LLMOPS_INFERENCE_LOG_DIR"):
        InferenceLogger("s3://bucket/log", "clf")  # the service refuses to start
    monkeypatch.setenv("LLMOPS_LOG_DURABLE", "sometimes")
    with pytest.raises(SettingsError, match="LLMOPS_LOG_DURABLE: Input should be a valid boolean"):
        InferenceLogger(tmp_path, "clf")
    for logger in loggers:
        logger.close()
