"""One way every service follows its release in the registry, without a restart.

    follower = ReleaseFollower("rag", "champion", load=open_release, poll_s=30, retire=close_release)
    follower.start()            # the first release, loaded before the service takes requests
    served = follower.served    # per request: one snapshot (version + loaded release), used alone
    follower.reload()           # POST /reload: resolve the ref again; if it moved, load and swap

The ref is an alias (``champion``) or a pinned version (which never moves). A new version is loaded
in full by the thread that asked (``/reload``'s worker thread or the poll), never on a request's
path, one load at a time; then one attribute is replaced, so a request sees the old release or the
new one, never a mix. The old release is handed to ``retire`` (an LLM engine drains and stops);
requests that took it before the swap finish on it. A version the service ``refuse``s (the
classifier's other schema) is remembered as refused; a load that fails is retried at the next
reload. Either way the old release keeps serving, and a lasting problem is logged once, not at
every poll. Each worker process follows on its own: ``/reload`` reaches only the worker that takes
the call, so with more than one worker rely on the poll.

A follower that is not ``required`` (a shadow challenger, :mod:`llmops.shadow`) may serve nothing:
``start`` does not raise when its ref does not resolve or its first version cannot be loaded (it
logs why, once), ``current`` is None until a reload finds a version it can load.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from llmops.registry import CHAMPION, ModelVersion, Registry, RegistryError

T = TypeVar("T")
logger = logging.getLogger("bentoml.llmops.release_follower")


@dataclass(frozen=True)
class Served(Generic[T]):
    """One loaded version, swapped as a whole: a request reads it once and uses only that."""

    version: ModelVersion
    release: T


class Reload(BaseModel):
    """The body of ``POST /reload``, the same in every service."""

    model: str
    previous: str  # the version served when the reload began
    current: str  # the version served now
    reloaded: bool  # whether the served version changed
    error: str | None = None  # why not (404, 409, 500); the previous version keeps serving


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did: moved from ``previous`` to ``current``, or not, and why not."""

    name: str
    previous: str | None  # the version served when the reload began (None: nothing, an optional follower)
    current: str | None  # the version served now
    reloaded: bool  # whether the served version changed
    error: str | None = None  # why not; the previous version keeps serving
    status: HTTPStatus = HTTPStatus.OK  # 404: the ref no longer resolves; 409: refused; 500: load failed

    def answer(self) -> Reload:
        return Reload(model=self.name, previous=self.previous, current=self.current,
                            reloaded=self.reloaded, error=self.error)  # fmt: skip


class ReleaseFollower(Generic[T]):
    """Serves the version ``ref`` of registry name ``name`` resolves to, loaded by ``load``.

    Parameters
    ----------
    name, ref
        The registry name and an alias or version (None: the champion).
    load
        Loads a version completely (files, models, warm-up); runs off the request path.
    poll_s
        Reload every that many seconds in a background thread (0: only when :meth:`reload` is called).
    refuse
        ``refuse(served, loaded)``: why ``loaded`` cannot replace ``served`` without a restart, or None
        (``served`` is None when an optional follower serves nothing yet).
    retire
        Called with a release once it is no longer served (after a swap, a refusal, or :meth:`close`).
    required
        False: the follower may serve nothing (a ref that does not resolve is logged, not raised).
    """

    def __init__(
        self,
        name: str,
        ref: str | None,
        load: Callable[[ModelVersion], T],
        *,
        poll_s: float = 0.0,
        refuse: Callable[[T | None, T], str | None] | None = None,
        retire: Callable[[T], None] | None = None,
        log: logging.Logger | logging.LoggerAdapter | None = None,
        required: bool = True,
    ) -> None:
        self.name, self.ref = name, ref or CHAMPION
        self.poll_s, self.required = poll_s, required
        self._load, self._refuse, self._retire = load, refuse, retire
        self._log = log or logger
        self._served: Served[T] | None = None
        self._lock = threading.Lock()  # one load at a time: /reload and the poll
        self._refused: dict[str, str] = {}  # version -> why; versions are immutable, so it stays refused
        self._last_problem: str | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def resolve(self) -> ModelVersion:
        """The version the ref points at now (raises :class:`RegistryError`)."""
        return Registry().get(self.name, self.ref)

    def start(self) -> Served[T] | None:
        """Load the version the ref points at now and start the poll. A required follower's errors
        propagate (the service cannot start without a release); an optional one logs why it
        serves nothing and returns None."""
        with self._lock:
            if self.required:
                version = self.resolve()
                self._served = Served(version, self._load(version))
            else:
                try:
                    self._note(self._reload(None).error)
                except Exception as exc:  # e.g. a refuse() that raised: serve nothing, say why
                    self._note(f"{self.name}@{self.ref} could not be loaded: {exc!r}")
        if self.poll_s > 0:
            self._poller = threading.Thread(target=self._poll, name="release-poll", daemon=True)
            self._poller.start()
        return self._served

    @property
    def served(self) -> Served[T]:
        """The release served now: read it once per request (or batch) and use only that."""
        if self._served is None:
            raise RuntimeError(f"{self.name}: start() the follower before serving")
        return self._served

    @property
    def current(self) -> Served[T] | None:
        """The release served now, or None (an optional follower with nothing it could load)."""
        return self._served

    @property
    def problem(self) -> str | None:
        """Why the last reload did not serve what the ref names (logged once), or None."""
        return self._last_problem

    def reload(self) -> ReloadOutcome:
        """Resolve the ref again; if it moved, load the new version and swap it in."""
        with self._lock:
            outcome = self._reload(self._served if not self.required else self.served)
            self._note(outcome.error)
            return outcome

    def _reload(self, old: Served[T] | None) -> ReloadOutcome:
        was = old.version.version if old else None

        def unchanged(error: str | None = None, status: HTTPStatus = HTTPStatus.OK) -> ReloadOutcome:
            return ReloadOutcome(self.name, was, was, False, error, status)

        try:
            version = self.resolve()
        except RegistryError as exc:
            return unchanged(str(exc), HTTPStatus.NOT_FOUND)
        if version.version == was:
            return unchanged()
        if version.version in self._refused:
            return unchanged(self._refused[version.version], HTTPStatus.CONFLICT)
        still = f"still serving {old.version.tag}" if old else "serving nothing"
        try:
            new = self._load(version)  # completely, before any request can see it
        except Exception as exc:  # e.g. an unloadable version or no memory for it: keep serving
            error = f"{version.tag} could not be loaded, {still}: {exc!r}"
            return unchanged(error, HTTPStatus.INTERNAL_SERVER_ERROR)
        problem = self._refuse(old.release if old else None, new) if self._refuse else None
        if problem is not None:
            self._refused[version.version] = problem
            self._retire_quietly(new)
            return unchanged(problem, HTTPStatus.CONFLICT)
        self._served = Served(version, new)  # one reference store: the swap is atomic
        self._log.info("%s: serving %s (was %s)", "reloaded" if old else "loaded", version.tag,
                       old.version.tag if old else "nothing")  # fmt: skip
        if old is not None:
            self._retire_quietly(old.release)
        return ReloadOutcome(self.name, was, version.version, True)

    def _note(self, problem: str | None) -> None:
        """Log a problem when it is new: a lasting one (a refused version, a ref that no longer
        resolves) is logged once, not at every poll."""
        if problem is not None and problem != self._last_problem:
            self._log.warning("%s: %s", "not reloaded" if self._served else "nothing to serve", problem)
        self._last_problem = problem

    def _retire_quietly(self, release: T) -> None:
        if self._retire is None:
            return
        try:
            self._retire(release)
        except Exception:  # the new release serves either way; say why the old one lingers
            self._log.exception("retiring a release of %s failed", self.name)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.reload()
            except Exception as exc:  # e.g. a refuse() that raised: keep serving and polling
                with self._lock:
                    served = self._served.version.tag if self._served else "nothing"
                    self._note(f"reload failed, still serving {served}: {exc!r}")

    def close(self) -> None:
        """Stop the poll and retire the served release (the service is shutting down)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
        with self._lock:
            if self._served is not None:
                self._retire_quietly(self._served.release)


async def reload_route(
    follower: ReleaseFollower[Any], ctx: Any, also: Callable[[], object] | None = None
) -> Reload:
    """A service's ``POST /reload``: the load runs on a thread of its own, not on the event loop
    nor on the thread BentoML runs sync APIs on (a classifier's batches need it meanwhile).
    ``also`` follows another ref on that thread afterwards (the shadow challenger's,
    :meth:`llmops.shadow.Shadow.reload`); the answer is the served release's alone."""
    outcome = await asyncio.to_thread(follower.reload)
    if also is not None:
        await asyncio.to_thread(also)
    ctx.response.status_code = outcome.status
    return outcome.answer()


def document_reload(doc: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document lists /reload's 404, 409 and 500, which answer the same body as its 200."""
    responses = doc.get("paths", {}).get("/reload", {}).get("post", {}).get("responses", {})
    if "200" in responses:
        for status, why in [("404", "The alias or version no longer resolves"),
                            ("409", "Refused: serving it takes a restart"),
                            ("500", "The new version could not be loaded")]:  # fmt: skip
            responses[status] = {**responses["200"], "description": why}
    return doc
