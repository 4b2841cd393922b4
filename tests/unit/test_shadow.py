"""The shadow challenger's mechanics every service shares (llmops.shadow), on the real registry:
the sampling draw, the bounded queue that drops and counts, failures that stay on the worker,
the follower of the challenger's ref, and shutdown."""

import logging
import random
import threading
import time

import pytest

from llmops.faults import FAULTS_ENV
from llmops.registry import ModelVersion, Registry
from llmops.shadow import Shadow, ShadowSettings

LOGGER = "bentoml.llmops.shadow"


def register(name: str, payload: str) -> ModelVersion:
    def write(folder):
        (folder / "payload.txt").write_text(payload)

    return Registry().register(name, write, metadata={"payload": payload})


class Loaded:
    def __init__(self, version: ModelVersion) -> None:
        self.payload = (version.path / "payload.txt").read_text()
        self.retired = threading.Event()


class Answers:
    """What the challenger did: the jobs it answered (with the version), the failures handed on."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.gate, self.fail = gate, fail
        self.answered: list[tuple[str, object]] = []
        self.failed: list[tuple[object, str, float]] = []

    def answer(self, served, job) -> None:
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail:
            raise ValueError(f"challenger broke on {job}")
        self.answered.append((served.release.payload, job))

    def on_failure(self, served, job, error, latency_ms) -> None:
        self.failed.append((job, str(error), latency_ms))


@pytest.fixture
def versions(model_name):
    v1, v2 = register(model_name, "one"), register(model_name, "two")
    Registry().promote(model_name, v1.version)
    Registry().promote(model_name, v2.version, alias="challenger")
    return v1, v2


def shadow(model_name, answers, ref="challenger", **settings) -> Shadow:
    options = {"shadow_sample": 1.0, "shadow_queue": 4, "shadow_workers": 1} | settings
    return Shadow(model_name, ref, Loaded, answers.answer, answers.on_failure,
                  settings=ShadowSettings(**options), retire=lambda r: r.retired.set())  # fmt: skip


def wait_until(condition, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def balanced(info: dict) -> bool:
    """Every sampled request is answered, failed, dropped, queued or in flight."""
    return info["sampled"] == sum(info[k] for k in ("answered", "failed", "dropped", "queued", "in_flight"))


def test_without_a_ref_there_is_no_shadow_no_thread_and_no_draw(model_name):
    threads = threading.active_count()
    none = Shadow(model_name, None, Loaded, Answers().answer)
    none.start()
    assert not none.wants() and none.info() is None and none.challenger is None and none.reload() is None
    assert threading.active_count() == threads
    none.close()


def test_the_draw_takes_the_share_asked(versions, model_name):
    rng = random.Random(7)
    some = Shadow(model_name, "challenger", Loaded, Answers().answer, rng=rng,
                  settings=ShadowSettings(shadow_sample=0.25))  # fmt: skip
    some.start()
    try:
        share = sum(some.wants() for _ in range(4000)) / 4000
        assert 0.22 < share < 0.28
        some.settings.shadow_sample = 0.0
        assert not any(some.wants() for _ in range(100))
        some.settings.shadow_sample = 1.0
        assert all(some.wants() for _ in range(100))
    finally:
        some.close()


def test_the_challenger_answers_off_the_caller_and_counts(versions, model_name):
    answers = Answers()
    live = shadow(model_name, answers)
    live.start()
    try:
        assert live.challenger.version.version == versions[1].version
        for job in range(3):
            assert live.wants() and live.submit(job)
        wait_until(lambda: live.info()["answered"] == 3, "three answers")
        info = live.info()
    finally:
        live.close()
    assert answers.answered == [("two", 0), ("two", 1), ("two", 2)]  # the challenger's, in order
    assert (info["ref"], info["model"], info["version"], info["sample"]) == (
        "challenger", model_name, versions[1].version, 1.0
    )  # fmt: skip
    counts = (info["sampled"], info["failed"], info["dropped"], info["queue_cap"], info["workers"])
    assert counts == (3, 0, 0, 4, 1)
    assert balanced(info)


@pytest.mark.parametrize(
    ("variable", "given"),
    [("LLMOPS_SHADOW_SAMPLE", "1.5"), ("LLMOPS_SHADOW_SAMPLE", "-0.1"), ("LLMOPS_SHADOW_QUEUE", "0")],
)
def test_a_setting_out_of_range_is_refused_by_name(monkeypatch, variable, given):
    from llmops.settings import SettingsError
    from llmops.shadow import shadow_settings

    monkeypatch.setenv(variable, given)
    with pytest.raises(SettingsError, match=f"{variable}: Input should be"):
        shadow_settings()


def test_a_full_queue_drops_and_counts_and_never_waits(versions, model_name):
    gate = threading.Event()
    answers = Answers(gate)
    live = shadow(model_name, answers, shadow_queue=2)
    live.start()
    try:
        assert live.submit("first", requests=2)  # a batch of two sampled requests: one job
        wait_until(lambda: live.info()["in_flight"] == 2, "the worker to take the first job")
        began = time.perf_counter()
        kept = [live.submit(f"job {n}") for n in range(5)]
        assert time.perf_counter() - began < 0.5  # put or drop, never a wait
        assert kept == [True, True, False, False, False]
        info = live.info()
        assert (info["sampled"], info["queued"], info["dropped"], info["in_flight"]) == (7, 2, 3, 2)
        assert balanced(info)
        gate.set()
        wait_until(lambda: live.info()["answered"] == 4, "the kept jobs")
        assert balanced(live.info()) and live.info()["dropped"] == 3
    finally:
        gate.set()
        live.close()
    assert [job for _, job in answers.answered] == ["first", "job 0", "job 1"]


def test_a_failing_challenger_is_counted_its_rows_handed_on_and_logged_once(versions, model_name, caplog):
    answers = Answers(fail=True)
    live = shadow(model_name, answers)
    live.start()
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            for job in range(3):
                assert live.submit(job)  # the caller never sees the failure
            wait_until(lambda: live.info()["failed"] == 3, "three failures")
    finally:
        live.close()
    expected = [(n, f"challenger broke on {n}") for n in range(3)]
    assert [(job, error) for job, error, _ in answers.failed] == expected
    assert all(latency >= 0 for *_, latency in answers.failed)
    warnings = [r.getMessage() for r in caplog.records if "failed on a shadowed request" in r.getMessage()]
    assert len(warnings) == 1 and versions[1].tag in warnings[0] and "challenger broke on 0" in warnings[0]


def test_fault_points_make_one_challenger_version_fail_or_stall(versions, model_name, monkeypatch):
    answers = Answers()
    live = shadow(model_name, answers)
    live.start()
    try:
        monkeypatch.setenv(FAULTS_ENV, f"shadow.answer.{versions[1].version}")
        live.submit("raises")
        wait_until(lambda: live.info()["failed"] == 1, "the injected failure")
        assert "failure injected at shadow.answer." in answers.failed[0][1]
        monkeypatch.setenv(FAULTS_ENV, "shadow.answer:sleep=0.3")
        began = time.perf_counter()
        live.submit("sleeps")
        assert time.perf_counter() - began < 0.1
        wait_until(lambda: live.info()["answered"] == 1, "the slow answer")
        assert time.perf_counter() - began >= 0.3 and answers.answered == [("two", "sleeps")]
    finally:
        live.close()


def test_a_ref_that_does_not_resolve_is_no_shadow_said_once_until_a_reload_finds_it(model_name, caplog):
    v1, v2 = register(model_name, "one"), register(model_name, "two")
    Registry().promote(model_name, v1.version)
    live = shadow(model_name, Answers())
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        live.start()  # never raises: the champion serves without a shadow
        assert live.challenger is None and not live.wants()
        assert not live.submit("too soon")  # a caller that did not ask wants(): dropped, counted
        live.reload()
        live.reload()
    info = live.info()
    assert info["version"] is None and f"{model_name}:challenger not found" in info["problem"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(f"shadow {model_name}@challenger: nothing to serve")

    Registry().promote(model_name, v2.version, alias="challenger")  # llmops models promote --to challenger
    outcome = live.reload()
    assert (outcome.previous, outcome.current, outcome.reloaded) == (None, v2.version, True)
    assert live.challenger.release.payload == "two" and live.wants() and live.info()["problem"] is None
    live.close()
    assert live.challenger.release.retired.is_set()


def test_the_poll_follows_the_challenger_alias_and_retires_the_old_one(versions, model_name):
    v1, _ = versions
    live = Shadow(model_name, "challenger", Loaded, Answers().answer, poll_s=0.05,
                  retire=lambda r: r.retired.set())  # fmt: skip
    live.start()
    try:
        first = live.challenger
        Registry().promote(model_name, v1.version, alias="challenger")
        wait_until(lambda: live.challenger.version.version == v1.version, "the poll to follow the alias")
        assert first.release.retired.is_set() and live.challenger.release.payload == "one"
    finally:
        live.close()


def test_a_refused_version_is_not_a_shadow(versions, model_name):
    live = Shadow(model_name, "challenger", Loaded, Answers().answer,
                  refuse=lambda old, new: f"{new.payload} takes other columns")  # fmt: skip
    live.start()
    try:
        assert live.challenger is None and live.info()["problem"] == "two takes other columns"
    finally:
        live.close()


def test_close_drops_what_waits_stops_the_workers_and_retires_the_challenger(versions, model_name):
    gate = threading.Event()
    answers = Answers(gate)
    live = shadow(model_name, answers, shadow_queue=3)
    live.start()
    live.submit("held")
    wait_until(lambda: live.info()["in_flight"] == 1, "the worker to hold a job")
    for n in range(3):
        live.submit(n)
    began = time.perf_counter()
    live.close(timeout_s=0.3)  # the held job is stuck: close waits no longer than asked
    assert time.perf_counter() - began < 2
    info = live.info()
    assert (info["queued"], info["dropped"]) == (0, 3) and live.challenger.release.retired.is_set()
    assert not live.wants() and not live.submit("after close")
    gate.set()  # the stuck job ends; the worker then stops
    wait_until(lambda: not any(t.is_alive() for t in live._workers), "the worker to stop")
    assert balanced(live.info()) and live.info()["answered"] == 1
