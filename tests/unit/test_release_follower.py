"""The alias follower every service uses, on the real registry (the session's BentoML store):
requests see one whole release, loads run one at a time, a failed or refused load keeps the old
release serving, and the poll picks up a moved alias."""

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

import pytest

from llmops.registry import ModelVersion, Registry, RegistryError
from llmops.release_follower import ReleaseFollower


def register(name: str, payload: str) -> ModelVersion:
    def write(folder):
        (folder / "payload.txt").write_text(payload)

    return Registry().register(name, write, metadata={"payload": payload})


class Loaded:
    """A loaded release: its payload, read from the version's files, and whether it was retired."""

    def __init__(self, version: ModelVersion) -> None:
        self.payload = (version.path / "payload.txt").read_text()
        self.first = self.payload  # a torn swap would show one attribute of each release
        self.retired = threading.Event()


@pytest.fixture
def versions(model_name):
    v1, v2, v3 = (register(model_name, p) for p in ("one", "two", "three"))
    Registry().promote(model_name, v1.version)
    return v1, v2, v3


def wait_until(condition, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_reload_swaps_the_whole_release_and_retires_the_old_one(versions, model_name):
    v1, v2, _ = versions
    follower = ReleaseFollower(model_name, None, Loaded, retire=lambda r: r.retired.set())
    first = follower.start()
    assert (first.version.version, first.release.payload) == (v1.version, "one")

    unchanged = follower.reload()
    assert (unchanged.previous, unchanged.current, unchanged.reloaded) == (v1.version, v1.version, False)

    Registry().promote(model_name, v2.version)
    seen: list[tuple[str, str, str]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            served = follower.served  # one snapshot, used alone
            seen.append((served.version.version, served.release.payload, served.release.first))

    with ThreadPoolExecutor(4) as pool:
        readers = [pool.submit(read) for _ in range(4)]
        outcome = follower.reload()
        time.sleep(0.05)
        stop.set()
        for reader in readers:
            reader.result()

    expected = {"model": model_name, "previous": v1.version, "current": v2.version, "reloaded": True}
    assert outcome.answer().model_dump() == {**expected, "error": None}
    assert set(seen) <= {(v1.version, "one", "one"), (v2.version, "two", "two")}
    assert follower.served.release.payload == "two"
    assert first.release.retired.is_set() and not follower.served.release.retired.is_set()
    follower.close()
    assert follower.served.release.retired.is_set()  # closing retires what it served


def test_one_load_at_a_time_and_once_per_version(versions, model_name):
    v1, v2, _ = versions
    loading, most, loads = [0], [0], []
    lock = threading.Lock()

    def slow_load(version: ModelVersion) -> Loaded:
        with lock:
            loading[0] += 1
            most[0] = max(most[0], loading[0])
            loads.append(version.version)
        time.sleep(0.2)
        with lock:
            loading[0] -= 1
        return Loaded(version)

    follower = ReleaseFollower(model_name, "champion", slow_load)
    follower.start()
    Registry().promote(model_name, v2.version)
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda _: follower.reload(), range(4)))

    assert most[0] == 1 and loads == [v1.version, v2.version]
    assert sorted(o.reloaded for o in outcomes) == [False, False, False, True]
    assert {o.current for o in outcomes} == {v2.version}


def test_a_failed_load_keeps_the_old_release_and_is_logged_once(versions, model_name, caplog):
    v1, v2, _ = versions
    broken = {v2.version}

    def load(version: ModelVersion) -> Loaded:
        if version.version in broken:
            raise OSError(f"{version.tag}: weights truncated")
        return Loaded(version)

    follower = ReleaseFollower(model_name, None, load)
    follower.start()
    Registry().promote(model_name, v2.version)
    with caplog.at_level(logging.WARNING, logger="bentoml.llmops.release_follower"):
        outcomes = [follower.reload() for _ in range(3)]
    assert {(o.status, o.current, o.reloaded) for o in outcomes} == {
        (HTTPStatus.INTERNAL_SERVER_ERROR, v1.version, False)
    }
    assert "weights truncated" in outcomes[0].error and f"still serving {v1.tag}" in outcomes[0].error
    assert follower.served.release.payload == "one"
    assert sum("weights truncated" in r.getMessage() for r in caplog.records) == 1

    broken.clear()  # a load failure is retried: the version may load once memory or files allow
    assert follower.reload().reloaded and follower.served.release.payload == "two"


def test_a_refused_version_is_remembered_and_retired(versions, model_name):
    _, v2, _ = versions
    loaded: list[Loaded] = []

    def load(version: ModelVersion) -> Loaded:
        loaded.append(Loaded(version))
        return loaded[-1]

    def refuse(old: Loaded, new: Loaded) -> str | None:
        return f"{new.payload} needs a restart" if new.payload == "two" else None

    follower = ReleaseFollower(model_name, None, load, refuse=refuse, retire=lambda r: r.retired.set())
    follower.start()
    Registry().promote(model_name, v2.version)
    first, again = follower.reload(), follower.reload()
    assert first.status == again.status == HTTPStatus.CONFLICT
    assert first.error == again.error == "two needs a restart"
    assert len(loaded) == 2 and loaded[1].retired.is_set()  # loaded once, then let go
    assert follower.served.release.payload == "one" and not loaded[0].retired.is_set()


def test_a_pinned_version_never_moves_and_a_ref_without_a_version_does_not_start(versions, model_name):
    v1, v2, _ = versions
    pinned = ReleaseFollower(model_name, v1.version, Loaded)
    pinned.start()
    Registry().promote(model_name, v2.version)
    assert not pinned.reload().reloaded and pinned.served.version.version == v1.version

    with pytest.raises(RegistryError, match="not found"):
        ReleaseFollower(model_name, "challenger", Loaded).start()  # nothing to serve: no start


def test_an_optional_follower_serves_nothing_until_its_ref_resolves(versions, model_name, caplog):
    """A shadow challenger's follower: a ref that does not resolve is logged once, not raised."""
    _, v2, _ = versions
    follower = ReleaseFollower(model_name, "challenger", Loaded, required=False)
    with caplog.at_level(logging.WARNING, logger="bentoml.llmops.release_follower"):
        assert follower.start() is None and follower.current is None
        assert follower.reload().status == HTTPStatus.NOT_FOUND
    assert [r.getMessage() for r in caplog.records] == [f"nothing to serve: {follower.problem}"]
    assert "challenger not found" in follower.problem
    Registry().promote(model_name, v2.version, alias="challenger")
    outcome = follower.reload()
    assert (outcome.previous, outcome.current, outcome.reloaded) == (None, v2.version, True)
    assert follower.current.release.payload == "two" and follower.problem is None
    follower.close()


def test_the_poll_follows_a_moved_alias(versions, model_name):
    v1, v2, v3 = versions
    follower = ReleaseFollower(model_name, None, Loaded, poll_s=0.05)
    try:
        follower.start()
        Registry().promote(model_name, v2.version)
        wait_until(lambda: follower.served.version.version == v2.version, "the poll to serve v2")
        Registry().promote(model_name, v3.version)
        wait_until(lambda: follower.served.release.payload == "three", "the poll to serve v3")
    finally:
        follower.close()
    assert [h["version"] for h in Registry().history(model_name)] == [v1.version, v2.version, v3.version]
