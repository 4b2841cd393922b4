"""Append-only inference log: every prediction a service made, for drift monitoring and audits.

By default the request path only enqueues (:meth:`InferenceLogger.log` never blocks and never
touches storage); one daemon thread per logger buffers the rows by (UTC day, hour) and writes them
to a :class:`llmops.storage.Store`, a local folder or an ``s3://bucket/prefix``:

    folder  <root>/<model>/<YYYY-MM-DD>/<HH>-<pid>.jsonl                 appended to
    s3://   <root>/<model>/<YYYY-MM-DD>/<HH>-<pid>-<writer id>-<n>.jsonl  one new object per write

One file per worker process and hour, so workers never interleave lines and whole hours can be
shipped or deleted as files; S3 has no append, so there each write is an immutable object and a
random writer id keeps workers of different hosts apart. Rows are written at least every
``flush_interval`` seconds to a folder (``$LLMOPS_INFERENCE_LOG_FLUSH_S``, default 1) and every
``upload_interval`` seconds to S3 (``$LLMOPS_INFERENCE_LOG_UPLOAD_S``, default 60: never one PUT
per request), as soon as 10,000 rows wait, on :meth:`InferenceLogger.flush` and on close. A write
that fails stays buffered and is retried on the interval. :func:`read_log` reads a time window
back as one DataFrame, from either kind of store.

Durable mode (``durable=True``, ``$LLMOPS_LOG_DURABLE``; a folder only) trades that for a
guarantee: :meth:`InferenceLogger.log` appends the rows to the same hourly file itself, one append
per call and hour, and returns only once the operating system holds them, so an answer sent after
it is never lost to a killed worker (a crash of the machine still can: there is no fsync). A write
that fails raises, and the request fails with it instead of being answered unlogged.

A service with a shadow challenger (:mod:`llmops.shadow`) logs the challenger's answers beside the
champion's, under the same ``request_id``: each row says its ``role``, ``"champion"`` or
``"shadow"`` (a row without one, written before roles existed, is the champion's). A shadow row is
never traffic: :func:`read_log` returns the champion's rows unless asked for others.
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
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmops import paths
from llmops.settings import InferenceLogSettings, SettingsError, settings_from_env
from llmops.storage import StorageError, Store, as_location, open_store

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    import pandas as pd

LOG_DIR_ENV = paths.INFERENCE_LOG_ENV
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
CHAMPION_ROLE, SHADOW_ROLE = "champion", "shadow"  # a row's ``role``: who answered it
_MODEL_DIR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
logger = logging.getLogger(__name__)


def default_log_root() -> Path | str:
    """``$LLMOPS_INFERENCE_LOG_DIR`` (a folder or an ``s3://`` URL), else ``$LLMOPS_HOME/inference-log``."""
    return paths.inference_log_root()


def row_role(row: Mapping[str, Any]) -> str:
    """Who answered a row: its ``role``, the champion for a row without one."""
    return row.get("role") or CHAMPION_ROLE


def is_champion(row: Mapping[str, Any]) -> bool:
    """The row is the served release's answer (not a shadow challenger's): what monitors count."""
    return row_role(row) == CHAMPION_ROLE


def utc_now() -> str:
    """The row timestamp format: ISO 8601 in UTC."""
    return datetime.now(timezone.utc).isoformat()


def _model_store(root: Path | str | None, model_name: str) -> Store:
    """The store of the model's log: ``<root>/<model_name>``, a folder or under ``s3://``."""
    if not _MODEL_DIR.match(model_name):
        raise StorageError(f"model_name: {model_name!r} cannot name a log folder (letters, digits, '_.-')")
    root = root if root is not None else default_log_root()
    return open_store(as_location(root), LOG_DIR_ENV).child(model_name)


def _options(flush: float | None, upload: float | None, durable: bool | None) -> tuple[float, float, bool]:
    """The given intervals and mode, else the settings' (``$LLMOPS_INFERENCE_LOG_FLUSH_S``,
    ``_UPLOAD_S``, ``$LLMOPS_LOG_DURABLE``)."""
    if flush is None or upload is None or durable is None:
        defaults = settings_from_env(InferenceLogSettings)
        flush = defaults.inference_log_flush_s if flush is None else flush
        upload = defaults.inference_log_upload_s if upload is None else upload
        durable = defaults.log_durable if durable is None else durable
    for seconds, field in ((flush, "flush_interval"), (upload, "upload_interval")):
        if seconds <= 0:  # programming error: the settings refuse 0, so only a caller's argument can
            raise ValueError(f"{field}: must be > 0 seconds, got {seconds}")
    return flush, upload, durable


class InferenceLogger:
    """Writes logged rows on a background thread; one logger per model and process.

    Parameters
    ----------
    root : Path or str, optional
        Log root, a folder or an ``s3://bucket/prefix`` URL; ``None`` means :func:`default_log_root`.
    model_name : str
        Registry name of the model; the folder under ``root``.
    flush_interval : float, optional
        With a folder: most seconds before rows reach the file; default
        ``$LLMOPS_INFERENCE_LOG_FLUSH_S`` or 1.
    upload_interval : float, optional
        With an ``s3://`` root: most seconds between uploads; default ``$LLMOPS_INFERENCE_LOG_UPLOAD_S``
        or 60.
    max_pending : int
        Batches waiting to be written before :meth:`log` drops (and counts) new ones:
        a slow disk must never stall or grow the serving process without bound.
    durable : bool, optional
        :meth:`log` writes the rows itself and returns once the OS holds them (no writer thread);
        a folder only. Default ``$LLMOPS_LOG_DURABLE`` or False.
    """

    WRITE_ROWS = 10_000  # write early once this many rows wait
    MAX_BUFFERED_ROWS = 100_000  # while writes fail, keep at most this many rows (oldest hours dropped)

    def __init__(
        self,
        root: Path | str | None,
        model_name: str,
        *,
        flush_interval: float | None = None,
        upload_interval: float | None = None,
        max_pending: int = 10_000,
        durable: bool | None = None,
    ) -> None:
        self.store = _model_store(root, model_name)
        self.folder: Path | str = Path(self.store.url) if self.store.can_append else self.store.url
        self.flush_interval, self.upload_interval, self.durable = _options(
            flush_interval, upload_interval, durable
        )
        if self.durable and not self.store.can_append:
            # S3 has no append: one object per request would be the only durable write, and a
            # PUT per prediction is a cost and a latency no deployment should get by surprise
            raise SettingsError(
                f"LLMOPS_LOG_DURABLE=true needs a folder log, and LLMOPS_INFERENCE_LOG_DIR is "
                f"{self.store.url}: S3 cannot append a row per request. Log to a folder (and ship it "
                f"to S3 by the hour) or unset LLMOPS_LOG_DURABLE"
            )
        if not self.store.can_append and importlib.util.find_spec("boto3") is None:
            # fail at start: a writer that cannot upload would retry and drop rows unseen
            raise StorageError(
                f"inference log {self.store.url}: writing to S3 needs boto3 (pip install boto3)"
            )
        self.writer_id = uuid.uuid4().hex[:8]
        self._writes = 0
        self.dropped = 0  # rows lost to a full queue, an unserialisable row, or failing writes
        self._queue: queue.Queue[list[dict[str, Any]] | threading.Event | None] = queue.Queue(max_pending)
        self._append_lock = threading.Lock()  # durable: one request's lines never split another's
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"inference-log:{model_name}", daemon=True)
        if not self.durable:
            self._thread.start()
        atexit.register(self.close)

    @property
    def alive(self) -> bool:
        """Rows logged now are written (False after :meth:`close`, or if the writer thread died)."""
        return not self._closed and (self.durable or self._thread.is_alive())

    def log(self, rows: list[dict[str, Any]]) -> None:
        """Enqueue rows (see ``ROW_FIELDS``); returns at once, drops them if the writer is far behind.
        Durable: returns once the rows are written (after :meth:`close` too: the answer still
        leaves), and raises :class:`StorageError` if they cannot be."""
        if rows and self.durable:
            self._append_now(rows)
        if self._closed or not rows or self.durable:
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
        """Block until every row logged so far has had a write attempt; False on timeout. A failed
        write stays buffered and is retried on the interval."""
        if self._closed or self.durable:  # durable: log() wrote them already
            return True
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the thread (idempotent; also run at exit)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self.durable:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            logger.warning("inference log %s: writer stuck, closing without the last rows", self.folder)
            return
        self._thread.join(timeout)

    def _append_now(self, rows: list[dict[str, Any]]) -> None:
        """Durable: one append per (day, hour) of ``rows`` to this process's file, under a lock."""
        pending: dict[tuple[str, str], list[str]] = {}
        self._buffer(rows, pending)
        with self._append_lock:
            for day, hour in sorted(pending):
                key = f"{day}/{hour}-{os.getpid()}.jsonl"
                try:
                    # the file is closed before this returns: the bytes are in the OS's page cache
                    self.store.append_bytes(key, "".join(pending[day, hour]).encode())
                except OSError as exc:
                    raise StorageError(
                        f"inference log {self.store.join(key)}: cannot write (durable log): {exc}"
                    ) from exc

    # ---- writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        interval = self.flush_interval if self.store.can_append else self.upload_interval
        pending: dict[tuple[str, str], list[str]] = {}  # (day, hour) -> JSON lines not yet written
        buffered = 0
        failing = False  # the last write failed: retry on the interval only, never per request
        next_write = time.monotonic() + interval
        while True:
            wait = max(0.0, next_write - time.monotonic()) if pending else None
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = []  # the interval is up
            if isinstance(item, list) and item:
                if not pending:  # the interval starts with the first row waiting, not at the last write
                    next_write = time.monotonic() + interval
                buffered += self._buffer(item, pending)
            if (
                item is None
                or isinstance(item, threading.Event)
                or (pending and time.monotonic() >= next_write)
                or (buffered >= self.WRITE_ROWS and not failing)
            ):
                buffered = self._write(pending)
                failing = buffered > 0
                next_write = time.monotonic() + interval
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

    def _write(self, pending: dict[tuple[str, str], list[str]]) -> int:
        """One append (folder) or one new object (S3) per (day, hour) waiting; what fails stays
        for the next try. Returns the rows left."""
        for day, hour in sorted(pending):
            data = "".join(pending[day, hour]).encode()
            try:
                if self.store.can_append:
                    self.store.append_bytes(f"{day}/{hour}-{os.getpid()}.jsonl", data)
                else:
                    key = f"{day}/{hour}-{os.getpid()}-{self.writer_id}-{self._writes:06d}.jsonl"
                    self.store.write_bytes(key, data)
            except Exception as exc:  # the writer must outlive any storage failure
                logger.error("inference log %s: write failed, will retry: %s", self.folder, exc)
                continue
            self._writes += 1
            del pending[day, hour]
        left = sum(len(lines) for lines in pending.values())
        for day_hour in sorted(pending):  # storage is down: bound memory, oldest hours first
            if left <= self.MAX_BUFFERED_ROWS:
                break
            lost = len(pending.pop(day_hour))
            self.dropped += lost
            left -= lost
            logger.warning("inference log %s: %d rows dropped, writes keep failing", self.folder, lost)
        return left


def _row_moment(timestamp: Any) -> datetime:
    """The row's UTC time (now, for a missing or malformed timestamp): it picks the file."""
    try:
        return datetime.fromisoformat(str(timestamp)).astimezone(timezone.utc)
    except ValueError:
        return datetime.now(timezone.utc)


# ---- reading ------------------------------------------------------------------------------


def read_log(
    root: Path | str | None,
    model_name: str,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    roles: Iterable[str] = (CHAMPION_ROLE,),
) -> pd.DataFrame:
    """Rows logged for ``model_name`` with ``since <= timestamp < until``, oldest first; ``root``
    is a folder or an ``s3://`` URL (default: :func:`default_log_root`). Only the rows of
    ``roles`` (default: the champion's; a shadow challenger's rows share its request ids, and
    the frame has no column to tell them apart).

    Columns: the ``ROW_FIELDS`` except ``features``, whose keys become columns of their own
    (a feature named like one of those fields is kept as ``features.<name>``). ``timestamp``
    is a tz-aware UTC datetime. Naive ``since``/``until`` are taken as UTC. A torn last line
    (a worker killed mid-write) is skipped.
    """
    import pandas as pd

    store = _model_store(root, model_name)
    start, end = _as_utc(since), _as_utc(until)

    def outside(day: str) -> bool:  # whole days outside the window are never opened
        return bool((start and day < start.strftime("%Y-%m-%d")) or (end and day > end.strftime("%Y-%m-%d")))

    wanted = set(roles)
    rows = _read_objects(store, [d for d in store.folders() if _DAY.match(d) and not outside(d)])
    rows = [row for row in rows if row_role(row) in wanted]

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
