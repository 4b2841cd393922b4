"""Append-only inference log: every prediction a service made, for drift monitoring and audits.

The request path only enqueues (:meth:`InferenceLogger.log` never blocks and never touches
the disk); a daemon thread writes JSON lines to

    <root>/<model>/<YYYY-MM-DD>/<HH>-<pid>.jsonl        (UTC date and hour of the row)

one file per worker process and hour, so workers never interleave lines and whole hours
can be shipped or deleted as files. Lines reach the OS at least every ``flush_interval``
seconds. :func:`read_log` reads a time window back as one DataFrame.

When the root is an ``s3://bucket/prefix`` URL, the writer keeps rows in memory and uploads them
as immutable objects (S3 has no append), one per hour of rows and upload:

    <root>/<model>/<YYYY-MM-DD>/<HH>-<pid>-<writer id>-<n>.jsonl

at least every ``upload_interval`` seconds (``$LLMOPS_INFERENCE_LOG_UPLOAD_S``, default 60), as
soon as 10,000 rows wait, on :meth:`InferenceLogger.flush` and on close: never one PUT per
request. The random writer id keeps workers of different hosts apart. :func:`read_log` reads
S3 the same way, with the same window.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from llmops.storage import Store, as_location, is_s3_url, open_store

if TYPE_CHECKING:
    import pandas as pd

LOG_DIR_ENV = "LLMOPS_INFERENCE_LOG_DIR"
FLUSH_ENV = "LLMOPS_INFERENCE_LOG_FLUSH_S"
UPLOAD_ENV = "LLMOPS_INFERENCE_LOG_UPLOAD_S"
# what every row holds; ``features`` is a dict {column: value}
ROW_FIELDS = (
    "request_id",
    "row",
    "timestamp",
    "model",
    "model_version",
    "features",
    "prediction",
    "probability",
)
_MODEL_DIR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
logger = logging.getLogger(__name__)


def default_log_root() -> Path | str:
    """``$LLMOPS_INFERENCE_LOG_DIR`` (a folder or an ``s3://`` URL), else ``$LLMOPS_HOME/inference-log``,
    else ``.llmops/inference-log``."""
    if explicit := os.environ.get(LOG_DIR_ENV):
        return explicit if is_s3_url(explicit) else Path(explicit).expanduser()
    if home := os.environ.get("LLMOPS_HOME"):
        return Path(home).expanduser() / "inference-log"
    return Path(".llmops") / "inference-log"


def utc_now() -> str:
    """The row timestamp format: ISO 8601 in UTC."""
    return datetime.now(timezone.utc).isoformat()


def _model_dir(root: Path | str | None, model_name: str) -> Path | Store:
    """The model's log folder: a local path, or a store for an ``s3://`` root."""
    if not _MODEL_DIR.match(model_name):
        raise ValueError(f"model_name: {model_name!r} cannot name a log folder (letters, digits, '_.-')")
    root = root if root is not None else default_log_root()
    if is_s3_url(root):
        return open_store(as_location(root), LOG_DIR_ENV).child(model_name)
    return Path(root) / model_name


class InferenceLogger:
    """Writes logged rows on a background thread; one logger per model and process.

    Parameters
    ----------
    root : Path or str, optional
        Log root, a folder or an ``s3://bucket/prefix`` URL; ``None`` means :func:`default_log_root`.
    model_name : str
        Registry name of the model; the folder under ``root``.
    flush_interval : float, optional
        Seconds between flushes to the OS; default ``$LLMOPS_INFERENCE_LOG_FLUSH_S`` or 1.
    upload_interval : float, optional
        With an ``s3://`` root: most seconds between uploads; default ``$LLMOPS_INFERENCE_LOG_UPLOAD_S``
        or 60.
    max_pending : int
        Batches waiting to be written before :meth:`log` drops (and counts) new ones:
        a slow disk must never stall or grow the serving process without bound.
    """

    def __init__(
        self,
        root: Path | str | None,
        model_name: str,
        *,
        flush_interval: float | None = None,
        upload_interval: float | None = None,
        max_pending: int = 10_000,
    ) -> None:
        folder = _model_dir(root, model_name)
        if isinstance(folder, Store) and importlib.util.find_spec("boto3") is None:
            # fail at start: a writer that cannot upload would retry and drop rows unseen
            raise ValueError(f"inference log {folder.url}: writing to S3 needs boto3 (pip install boto3)")
        self.store: Store | None = folder if isinstance(folder, Store) else None
        self.folder: Path | str = folder.url if isinstance(folder, Store) else folder
        if flush_interval is None:
            flush_interval = float(os.environ.get(FLUSH_ENV, "1.0"))
        if flush_interval <= 0:
            raise ValueError(f"flush_interval: must be > 0 seconds, got {flush_interval}")
        if upload_interval is None:
            try:
                upload_interval = float(os.environ.get(UPLOAD_ENV, "60"))
            except ValueError:
                raise ValueError(f"{UPLOAD_ENV}: {os.environ[UPLOAD_ENV]!r} is not a number") from None
        if upload_interval <= 0:
            raise ValueError(f"upload_interval: must be > 0 seconds, got {upload_interval}")
        self.flush_interval, self.upload_interval = flush_interval, upload_interval
        self.writer_id = uuid.uuid4().hex[:8]
        self._uploads = 0
        self.dropped = 0  # rows lost to a full queue or a failed write
        self._queue: queue.Queue[list[dict[str, Any]] | threading.Event | None] = queue.Queue(max_pending)
        self._closed = False
        run = self._run if self.store is None else self._run_uploads
        self._thread = threading.Thread(target=run, name=f"inference-log:{model_name}", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @property
    def alive(self) -> bool:
        """The writer thread is running (False after :meth:`close`)."""
        return self._thread.is_alive() and not self._closed

    def log(self, rows: list[dict[str, Any]]) -> None:
        """Enqueue rows (see ``ROW_FIELDS``); returns at once, drops them if the writer is far behind."""
        if self._closed or not rows:
            return
        try:
            self._queue.put_nowait(rows)
        except queue.Full:
            before, self.dropped = self.dropped, self.dropped + len(rows)
            if before == 0 or before // 10_000 != self.dropped // 10_000:  # warn, but not per request
                logger.warning(
                    "inference log %s is behind: %d rows dropped so far", self.folder, self.dropped
                )

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every row logged so far is written and flushed; False on timeout. With S3 it
        waits for an upload attempt: a failed upload stays buffered and is retried on the interval."""
        if self._closed:
            return True
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, close the file and stop the thread (idempotent; also run at exit)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            logger.warning("inference log %s: writer stuck, closing without the last rows", self.folder)
            return
        self._thread.join(timeout)

    # ---- writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        handle: IO[str] | None = None
        path: Path | None = None
        dirty = False
        next_flush = time.monotonic() + self.flush_interval
        while True:
            wait = max(0.0, next_flush - time.monotonic()) if dirty else None
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = []  # the flush interval is up
            if isinstance(item, list) and item:
                handle, path = self._write(item, handle, path)
                dirty = True
            if item is None or isinstance(item, threading.Event) or time.monotonic() >= next_flush:
                if handle is not None and dirty:
                    _flush_quietly(handle)
                dirty = False
                next_flush = time.monotonic() + self.flush_interval
            if isinstance(item, threading.Event):
                item.set()
            elif item is None:
                if handle is not None:
                    handle.close()
                return

    def _write(
        self, rows: list[dict[str, Any]], handle: IO[str] | None, path: Path | None
    ) -> tuple[IO[str] | None, Path | None]:
        for row in rows:
            target = self._path_for(row.get("timestamp"))
            try:
                if handle is None or target != path:
                    if handle is not None:
                        handle.close()
                        handle = None
                    target.parent.mkdir(parents=True, exist_ok=True)
                    handle, path = open(target, "a", encoding="utf-8"), target
                handle.write(json.dumps(row, default=str) + "\n")
            except (OSError, TypeError, ValueError) as exc:
                self.dropped += 1
                logger.error("inference log %s: cannot write a row: %s", target, exc)
        return handle, path

    def _path_for(self, timestamp: Any) -> Path:
        moment = _row_moment(timestamp)
        return Path(self.folder) / moment.strftime("%Y-%m-%d") / f"{moment:%H}-{os.getpid()}.jsonl"

    # ---- writer thread, s3:// root ----------------------------------------------------------

    UPLOAD_ROWS = 10_000  # upload early once this many rows wait
    MAX_BUFFERED_ROWS = 100_000  # while uploads fail, keep at most this many rows (oldest dropped)

    def _run_uploads(self) -> None:
        pending: dict[tuple[str, str], list[str]] = {}  # (day, hour) -> JSON lines not yet uploaded
        buffered = 0
        failing = False  # the last upload failed: retry on the interval only, never per request
        next_upload = time.monotonic() + self.upload_interval
        while True:
            wait = max(0.0, next_upload - time.monotonic()) if pending else None
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = []  # the upload interval is up
            if isinstance(item, list) and item:
                if not pending:  # the interval starts with the first row waiting, not at the last upload
                    next_upload = time.monotonic() + self.upload_interval
                buffered += self._buffer(item, pending)
            if (
                item is None
                or isinstance(item, threading.Event)
                or (pending and time.monotonic() >= next_upload)
                or (buffered >= self.UPLOAD_ROWS and not failing)
            ):
                buffered = self._upload(pending)
                failing = buffered > 0
                next_upload = time.monotonic() + self.upload_interval
            if isinstance(item, threading.Event):
                item.set()
            elif item is None:
                return

    def _buffer(self, rows: list[dict[str, Any]], pending: dict[tuple[str, str], list[str]]) -> int:
        added = 0
        for row in rows:
            try:
                line = json.dumps(row, default=str) + "\n"
            except (TypeError, ValueError) as exc:
                self.dropped += 1
                logger.error("inference log %s: cannot write a row: %s", self.folder, exc)
                continue
            moment = _row_moment(row.get("timestamp"))
            pending.setdefault((moment.strftime("%Y-%m-%d"), f"{moment:%H}"), []).append(line)
            added += 1
        return added

    def _upload(self, pending: dict[tuple[str, str], list[str]]) -> int:
        """One object per (day, hour) waiting; what fails stays for the next try. Returns rows left."""
        assert self.store is not None
        for day, hour in sorted(pending):
            key = f"{day}/{hour}-{os.getpid()}-{self.writer_id}-{self._uploads:06d}.jsonl"
            try:
                self.store.write_bytes(key, "".join(pending[day, hour]).encode())
            except Exception as exc:  # the writer must outlive any store failure
                logger.error("inference log %s: upload failed, will retry: %s", self.folder, exc)
                continue
            self._uploads += 1
            del pending[day, hour]
        left = sum(len(lines) for lines in pending.values())
        for day_hour in sorted(pending):  # the store is down: bound memory, oldest hours first
            if left <= self.MAX_BUFFERED_ROWS:
                break
            lost = len(pending.pop(day_hour))
            self.dropped += lost
            left -= lost
            logger.warning("inference log %s: %d rows dropped, uploads keep failing", self.folder, lost)
        return left


def _row_moment(timestamp: Any) -> datetime:
    """The row's UTC time (now, for a missing or malformed timestamp): it picks the file."""
    try:
        return datetime.fromisoformat(str(timestamp)).astimezone(timezone.utc)
    except ValueError:
        return datetime.now(timezone.utc)


def _flush_quietly(handle: IO[str]) -> None:
    try:
        handle.flush()
    except OSError as exc:
        logger.error("inference log: flush failed: %s", exc)


# ---- reading ------------------------------------------------------------------------------


def read_log(
    root: Path | str | None,
    model_name: str,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
) -> pd.DataFrame:
    """Rows logged for ``model_name`` with ``since <= timestamp < until``, oldest first; ``root``
    is a folder or an ``s3://`` URL (default: :func:`default_log_root`).

    Columns: the ``ROW_FIELDS`` except ``features``, whose keys become columns of their own
    (a feature named like one of those fields is kept as ``features.<name>``). ``timestamp``
    is a tz-aware UTC datetime. Naive ``since``/``until`` are taken as UTC. A torn last line
    (a worker killed mid-write) is skipped.
    """
    import pandas as pd

    folder = _model_dir(root, model_name)
    start, end = _as_utc(since), _as_utc(until)

    def outside(day: str) -> bool:  # whole days outside the window are never opened
        return bool((start and day < start.strftime("%Y-%m-%d")) or (end and day > end.strftime("%Y-%m-%d")))

    rows: list[dict[str, Any]] = []
    if isinstance(folder, Store):
        rows = _read_objects(folder, [d for d in folder.folders() if _DAY.match(d) and not outside(d)])
    else:
        for day in sorted(folder.glob("????-??-??")):
            if outside(day.name):
                continue
            for file in sorted(day.glob("*.jsonl")):
                rows.extend(_read_lines(file))

    meta_columns = [f for f in ROW_FIELDS if f != "features"]
    if not rows:
        return pd.DataFrame(
            {c: pd.Series(dtype="datetime64[ns, UTC]" if c == "timestamp" else object) for c in meta_columns}
        )
    meta = pd.DataFrame([{c: r.get(c) for c in meta_columns} for r in rows])
    features = pd.DataFrame([r.get("features") or {} for r in rows])
    features.columns = [f"features.{c}" if c in meta_columns else c for c in features.columns]
    frame = pd.concat([meta, features], axis=1)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    if start is not None:
        frame = frame[frame["timestamp"] >= start]
    if end is not None:
        frame = frame[frame["timestamp"] < end]
    return frame.sort_values(["timestamp", "request_id", "row"], kind="stable").reset_index(drop=True)


def _read_lines(file: Path) -> list[dict[str, Any]]:
    with open(file, encoding="utf-8") as handle:
        return _parse_lines(handle, file)


def _parse_lines(lines: Iterable[str], where: Path | str) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s:%d: skipping a torn or invalid line", where, number)
    return rows


def _read_objects(store: Store, days: list[str]) -> list[dict[str, Any]]:
    """The rows of every ``.jsonl`` object of ``days``, fetched a few at a time, in key order."""
    from concurrent.futures import ThreadPoolExecutor

    keys = [key for day in sorted(days) for key in store.list(day) if key.endswith(".jsonl")]

    def fetch(key: str) -> list[dict[str, Any]]:
        text = store.read_bytes(key).decode("utf-8", errors="replace")
        return _parse_lines(text.splitlines(), store.join(key))

    with ThreadPoolExecutor(max_workers=8) as pool:
        return [row for rows in pool.map(fetch, keys) for row in rows]


def _as_utc(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
