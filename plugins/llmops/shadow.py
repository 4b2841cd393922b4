"""A shadow challenger: a second version of the served release answers a sample of live requests
beside the champion, off the request path, and both answers are logged under one request id, so
that the challenger is judged on real traffic before it takes over. Every service uses this one
module (docs/serving.md, "Shadow challenger"):

    shadow = Shadow("rag", "challenger", open_release, answer, failed, poll_s=30, retire=close_release)
    shadow.start()              # loads the challenger if its ref resolves; else logs why, once
    if shadow.wants():          # per request: the sampling draw (False at once without a challenger)
        shadow.submit(job)      # never blocks: on a full queue the job is dropped and counted
    shadow.reload()             # POST /reload and the poll follow the ref as the champion's follower does
    shadow.info()               # /info: the ref, the version it resolved to, the sample, the counters
    shadow.close()              # on shutdown: what still waits is dropped, the workers stop

- **Sampling**: each request is drawn with probability ``LLMOPS_SHADOW_SAMPLE`` (default 0.1).
- **Bounded**: a sampled request becomes a job in a queue of at most ``LLMOPS_SHADOW_QUEUE`` jobs;
  when it is full the job is dropped and counted, never buffered without limit nor waited for.
- **Off the request path**: ``LLMOPS_SHADOW_WORKERS`` daemon threads take the jobs and call
  ``answer(served, job)`` with the challenger serving at that moment (:meth:`Shadow.answer_one`);
  ``answer`` does the challenger's work and logs its row. An exception there (or the fault point
  ``shadow.answer``, ``shadow.answer.<VERSION>``: llmops.faults) is counted and handed to
  ``failed(served, job, error, latency_ms)``, which logs the failed row; it never reaches a request.
- **Following the ref**: a :class:`~llmops.release_follower.ReleaseFollower` that is not required:
  resolve, load off the request path, swap atomically, poll or ``/reload``. A ref that does not
  resolve, or a version that cannot be loaded or is refused, is logged once and the service answers
  without a shadow until a reload finds one.

The counters count requests: ``sampled = answered + failed + dropped + queued + in_flight``.
Without a ref there is no follower, no thread and no draw: ``wants()`` is one attribute test.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any, Generic, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from pydantic import BaseModel, Field

from llmops.faults import fault_point
from llmops.registry import ModelVersion
from llmops.release_follower import ReleaseFollower, ReloadOutcome, Served
from llmops.settings import settings_from_env
from llmops.tracing import annotate, handed_context, span

T = TypeVar("T")  # a loaded release
J = TypeVar("J")  # a job: what the challenger needs to answer one sampled request (or a batch's)
logger = logging.getLogger("bentoml.llmops.shadow")
_STOP = object()  # tells a worker to end


class ShadowSettings(BaseModel):
    """How much of the traffic a challenger answers, and how much work may wait for it."""

    shadow_sample: float = Field(0.1, ge=0, le=1)  # the share of live requests it also answers
    shadow_queue: int = Field(64, ge=1)  # most jobs waiting; more are dropped and counted
    shadow_workers: int = Field(1, ge=1, le=64)  # threads answering jobs


def shadow_settings() -> ShadowSettings:
    """``$LLMOPS_SHADOW_SAMPLE``, ``$LLMOPS_SHADOW_QUEUE`` and ``$LLMOPS_SHADOW_WORKERS``, read now."""
    return settings_from_env(ShadowSettings)


class ShadowInfo(BaseModel):
    """What ``/info`` says of the shadow."""

    ref: str  # the alias or version it follows
    model: str
    version: str | None  # the version answering now (None: nothing could be loaded)
    problem: str | None  # why not, when the ref does not give a challenger (logged once)
    sample: float
    sampled: int  # requests drawn: answered + failed + dropped + queued + in_flight
    answered: int
    failed: int
    dropped: int  # the queue was full (or the service stopped before their turn)
    queued: int
    in_flight: int
    queue_cap: int  # LLMOPS_SHADOW_QUEUE, in jobs
    workers: int


class _Prefixed(logging.LoggerAdapter):
    """The follower's lines say they are about the shadow, not the served release."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return f"shadow {self.extra['what']}: {msg}", kwargs


class Shadow(Generic[T, J]):
    """A challenger answering a sample of the requests of the release ``name``.

    Parameters
    ----------
    name, ref
        The registry name and the challenger's alias or version (None: no shadow, no overhead).
    load
        Loads a version completely, as the champion's follower does (off the request path).
    answer
        ``answer(served, job)``: the challenger answers ``job`` and logs its row; runs on a worker.
    failed
        ``failed(served, job, error, latency_ms)``: log the row of a job ``answer`` raised on.
    settings
        Default: read from the environment now (:func:`shadow_settings`).
    poll_s, refuse, retire
        As :class:`~llmops.release_follower.ReleaseFollower`'s (``refuse``'s first argument is None
        until a challenger is served).
    rng
        The sampling draw (a seeded ``random.Random`` in tests).
    """

    def __init__(
        self,
        name: str,
        ref: str | None,
        load: Callable[[ModelVersion], T],
        answer: Callable[[Served[T], J], None],
        failed: Callable[[Served[T], J, Exception, float], None] | None = None,
        *,
        settings: ShadowSettings | None = None,
        poll_s: float = 0.0,
        refuse: Callable[[T | None, T], str | None] | None = None,
        retire: Callable[[T], None] | None = None,
        log: logging.Logger | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.name, self.ref = name, ref
        self.settings = settings or shadow_settings()
        self._answer, self._failed = answer, failed
        self._log = _Prefixed(log or logger, {"what": f"{name}@{ref}"})
        self._rng = rng or random.Random()
        self.follower: ReleaseFollower[T] | None = None
        if ref:
            self.follower = ReleaseFollower(name, ref, load, poll_s=poll_s, refuse=refuse, retire=retire,
                                            log=self._log, required=False)  # fmt: skip
        self._queue: queue.Queue[Any] = queue.Queue()  # bounded by submit(): _jobs, under the lock
        self._lock = threading.Lock()  # the counters, and the queue's size check with its put
        self._counts = {"sampled": 0, "answered": 0, "failed": 0, "dropped": 0}
        self._jobs, self._waiting, self._in_flight = 0, 0, 0  # jobs queued; requests queued, being answered
        self._workers: list[threading.Thread] = []
        self._closed = False
        self._last_failure: str | None = None

    def start(self) -> None:
        """Load the challenger (or log why there is none) and start the workers; never raises for
        a ref that does not resolve or a version that does not load."""
        if self.follower is None:
            return
        self.follower.start()
        for n in range(self.settings.shadow_workers):
            worker = threading.Thread(target=self._work, name=f"shadow-{n}:{self.name}", daemon=True)
            worker.start()
            self._workers.append(worker)

    @property
    def challenger(self) -> Served[T] | None:
        """The challenger answering now, or None."""
        return self.follower.current if self.follower is not None else None

    def wants(self) -> bool:
        """Whether this request is one the challenger also answers: a draw with probability
        ``shadow_sample``; False at once without a challenger."""
        if self.follower is None or self.follower.current is None or self._closed:
            return False
        sample = self.settings.shadow_sample
        return sample >= 1 or (sample > 0 and self._rng.random() < sample)

    def submit(self, job: J, requests: int = 1) -> bool:
        """Queue ``job`` (``requests`` sampled requests) for the challenger; returns at once, False
        when it was dropped: ``shadow_queue`` jobs already wait (or there is no challenger, or the
        service is stopping)."""
        with self._lock:
            self._counts["sampled"] += requests
            before = self._counts["dropped"]
            idle = self._closed or self.challenger is None
            full = not idle and self._jobs >= self.settings.shadow_queue
            if idle or full:
                self._counts["dropped"] += requests
            else:
                self._queue.put_nowait((job, requests, handed_context()))  # its trace, for the span
                self._jobs, self._waiting = self._jobs + 1, self._waiting + requests
        if full and (before == 0 or before // 1000 != (before + requests) // 1000):  # not per request
            self._log.warning("the queue is full (%d jobs): %d sampled requests dropped so far",
                              self.settings.shadow_queue, before + requests)  # fmt: skip
        return not (idle or full)

    def answer_one(self, served: Served[T], job: J, context: Context | None = None) -> bool:
        """The challenger ``served`` answers one job (on a worker thread): ``answer`` logs its row;
        a failure goes to ``failed`` and is logged when it is new. Never raises. The work is a
        ``shadow`` span (:mod:`llmops.tracing`) in the trace of the request that was sampled
        (``context``, taken when it was submitted)."""
        with span("shadow", parent=context, release=self.name, alias=self.ref,
                  release_version=served.version.version) as traced:  # fmt: skip
            return self._answer_one(served, job, traced)

    def _answer_one(self, served: Served[T], job: J, traced: trace.Span) -> bool:
        started = time.perf_counter()
        try:
            fault_point("shadow.answer")
            fault_point(f"shadow.answer.{served.version.version}")
            self._answer(served, job)
            return True
        except Exception as exc:
            annotate(traced, error=type(exc).__name__)
            self._note_failure(served, exc)
            if self._failed is not None:
                latency_ms = round((time.perf_counter() - started) * 1000, 1)
                try:
                    self._failed(served, job, exc, latency_ms)
                except Exception:  # the failed row is lost; the service is not
                    self._log.exception("could not log the failed answer of %s", served.version.tag)
            return False

    def reload(self) -> ReloadOutcome | None:
        """Resolve the ref again and swap in the version it names now (None: no shadow)."""
        return self.follower.reload() if self.follower is not None else None

    def info(self) -> dict[str, Any] | None:
        """The shadow as ``/info`` shows it (:class:`ShadowInfo`; None: no ref, no shadow)."""
        if self.follower is None:
            return None
        served = self.follower.current
        with self._lock:
            counts, queued, in_flight = dict(self._counts), self._waiting, self._in_flight
        return ShadowInfo(
            ref=str(self.ref),
            model=self.name,
            version=served.version.version if served else None,
            problem=self.follower.problem if served is None else None,
            sample=self.settings.shadow_sample,
            queued=queued,
            in_flight=in_flight,
            queue_cap=self.settings.shadow_queue,
            workers=len(self._workers),
            **counts,
        ).model_dump()

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop: what still waits is dropped and counted, the workers end after the job they hold
        (waiting at most ``timeout_s``: a stuck challenger must not hold up the service's stop),
        and the challenger is retired."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            while True:
                try:
                    _, requests, _ = self._queue.get_nowait()
                except queue.Empty:
                    break
                self._counts["dropped"] += requests
                self._jobs, self._waiting = self._jobs - 1, self._waiting - requests
        for _ in self._workers:
            self._queue.put(_STOP)
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        if self.follower is not None:
            self.follower.close()

    def _work(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            job, requests, context = item
            served = self.follower.current if self.follower is not None else None
            with self._lock:
                self._jobs, self._waiting, self._in_flight = (
                    self._jobs - 1, self._waiting - requests, self._in_flight + requests
                )  # fmt: skip
            ok = served is not None and self.answer_one(served, job, context)
            with self._lock:
                self._in_flight -= requests
                self._counts["answered" if ok else "failed"] += requests

    def _note_failure(self, served: Served[T], exc: Exception) -> None:
        """Log a failure when it is of a new kind (another challenger, another exception class),
        with its traceback, and every 1,000th: a challenger that always fails is one line, not one
        per request."""
        kind = f"{served.version.tag}:{type(exc).__name__}"
        with self._lock:
            failures = self._counts["failed"] + 1  # counted by the worker once this returns
        if kind != self._last_failure or failures % 1000 == 0:
            self._log.warning("%s failed on a shadowed request (%d so far; the champion's answer is "
                              "unaffected): %s: %s", served.version.tag, failures, type(exc).__name__, exc,
                              exc_info=kind != self._last_failure)  # fmt: skip
        self._last_failure = kind
