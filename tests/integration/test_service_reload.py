"""Hot reload run for real: a new champion is served while requests keep coming, none failing; and
a shadow challenger follows its own alias beside it, never touching the champion's answers."""

import contextlib
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from llmops.cli import main as llmops
from llmops.inference_log import read_log
from llmops.registry import ModelVersion, Registry
from llmops.request_log import read_rows
from llmops.tabular.classifier import build_pipeline, candidates, load_model
from llmops.tabular.data import TableSchema, infer_schema, load_table, normalize
from tests.classifier_release import register_passing_classifier
from tests.integration.test_classifier_service import HELD_OUT, records, serve

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def trained() -> tuple[dict[str, tuple[object, TableSchema]], pd.DataFrame]:
    """v1 and v2 share a schema but not their predictions; v3 was trained without 'worst area'."""
    raw = load_table()
    models = {}
    for key, family, dropped in [
        ("v1", "logistic_regression", []),
        ("v2", "random_forest", []),
        ("v3", "logistic_regression", ["worst area"]),
    ]:
        schema = infer_schema(raw.drop(columns=dropped), "target")
        train = normalize(raw, schema).iloc[:-HELD_OUT]
        model = build_pipeline(schema, candidates([family])[0])
        models[key] = (model.fit(train[list(schema.features)], train[schema.target]), schema)
    held_out = raw.iloc[-HELD_OUT:].drop(columns="target").reset_index(drop=True)
    return models, held_out


def register(prefix: str, models: dict[str, tuple[object, TableSchema]]) -> dict[str, ModelVersion]:
    """Register v1 as the champion of a new name; v2 and v3 registered beside it, not promoted."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    versions = {}
    for key, (model, schema) in models.items():
        versions[key] = register_passing_classifier(
            name, model, schema, promote=key == "v1", run_pathspec=f"TestFlow/{key}", candidate=key
        )  # one run per version: a run registers once
    return versions


@pytest.fixture(scope="module")
def expected_proba(trained) -> Callable[[ModelVersion], tuple[list[str], np.ndarray]]:
    """A version's classes and probabilities for the held-out rows, (rows, classes), from its files."""
    _, held_out = trained
    cache: dict[str, tuple[list[str], np.ndarray]] = {}

    def proba(version: ModelVersion) -> tuple[list[str], np.ndarray]:
        if version.version not in cache:
            model = load_model(version.path)
            schema = TableSchema.model_validate(version.read_json("schema.json"))
            classes = [str(c) for c in model.classes_]
            cache[version.version] = classes, model.predict_proba(normalize(held_out, schema))
        return cache[version.version]

    return proba


@pytest.fixture(scope="module")
def reloading(trained, tmp_path_factory):
    """A server of v1 without the poll: only POST /reload changes what it serves."""
    versions = register("reload", trained[0])
    log_dir = tmp_path_factory.mktemp("reload-log")
    with serve(versions["v1"].name, log_dir) as client:
        yield client, versions, log_dir


SLOW_S = 4.0  # how long the slow challenger takes per shadowed batch


@pytest.fixture(scope="module")
def polling(trained, tmp_path_factory):
    """A server of v1 that polls its alias every 0.2 s, and its shadow slot, the ``challenger``
    alias (unset at start), every request sampled into a queue of two jobs. Two versions fail on
    purpose as challengers (llmops.faults): v3 raises, "slow" (v1's model again) takes SLOW_S."""
    versions = register("poll", trained[0])
    model, schema = trained[0]["v1"]
    name = versions["v1"].name
    versions["slow"] = register_passing_classifier(
        name, model, schema, promote=False, run_pathspec="TestFlow/slow", candidate="slow"
    )
    faults = f"shadow.answer.{versions['v3'].version},shadow.answer.{versions['slow'].version}:sleep={SLOW_S}"
    shadow = {"LLMOPS_CLASSIFIER_SHADOW": "challenger", "LLMOPS_SHADOW_SAMPLE": "1",
              "LLMOPS_SHADOW_QUEUE": "2", "LLMOPS_FAULTS": faults}  # fmt: skip
    log_dir = tmp_path_factory.mktemp("poll-log")
    with serve(versions["v1"].name, log_dir, LLMOPS_RELOAD_POLL_S="0.2", **shadow) as client:
        yield client, versions, log_dir


@contextlib.contextmanager
def traffic(client: httpx.Client, held_out: pd.DataFrame, threads: int = 6) -> Iterator[list]:
    """Send requests from `threads` threads until the block ends; yields the growing list of
    (sent, answered, first row, response), both times by time.monotonic()."""
    firsts = [i % (HELD_OUT - 2) for i in range(64)]  # requests of 1-3 held-out rows
    bodies = [(f, {"records": records(held_out.iloc[f : f + 1 + i % 3])}) for i, f in enumerate(firsts)]
    stop, sent = threading.Event(), []

    def send(worker: int) -> None:
        for i in itertools.count(worker, threads):
            if stop.is_set():
                return
            first, body = bodies[i % len(bodies)]
            started = time.monotonic()
            response = client.post("/predict", json=body)  # a transport error fails the test
            sent.append((started, time.monotonic(), first, response))

    with ThreadPoolExecutor(threads) as pool:
        workers = [pool.submit(send, w) for w in range(threads)]
        try:
            yield sent
        finally:
            stop.set()
            for worker in workers:
                worker.result()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def answered_version(response: httpx.Response) -> str | None:
    if response.status_code != 200:
        return None  # a failure: the tests assert there are none
    (version,) = {a["model_version"] for a in response.json()}  # one request, one version
    return version


def assert_each_answer_matches_its_version(sent, versions, expected_proba) -> None:
    """Every record's probabilities are those of the version its answer names."""
    by_version = {v.version: v for v in versions.values()}
    for _, _, first, response in sent:
        for row, answer in enumerate(response.json(), start=first):
            classes, proba = expected_proba(by_version[answer["model_version"]])
            got = [answer["probabilities"][c] for c in classes]
            np.testing.assert_allclose(got, proba[row], rtol=0, atol=1e-9)


def test_reload_serves_the_new_champion_without_failing_a_request(reloading, trained, expected_proba):
    client, versions, log_dir = reloading
    v1, v2 = versions["v1"].version, versions["v2"].version
    with traffic(client, trained[1]) as sent:
        wait_until(lambda: len(sent) >= 30, "traffic")
        Registry().promote(versions["v1"].name, v2)
        wait_until(lambda: len(sent) >= 60, "traffic after the promotion")
        reload_sent = time.monotonic()
        reload = client.post("/reload")
        reload_answered = time.monotonic()
        settled = len(sent)
        wait_until(lambda: len(sent) >= settled + 30, "traffic after the reload")

    assert [r.status_code for *_, r in sent if r.status_code != 200] == []
    assert reload.status_code == 200, reload.text
    assert reload.json() == {
        "model": versions["v1"].name,
        "previous": v1,
        "current": v2,
        "reloaded": True,
        "error": None,
    }
    # promoted is not served until /reload; once /reload answered, only v2 answers
    assert {answered_version(r) for _, done, _, r in sent if done < reload_sent} == {v1}
    assert {answered_version(r) for start, _, _, r in sent if start > reload_answered} == {v2}
    assert_each_answer_matches_its_version(sent, versions, expected_proba)

    again = client.post("/reload").json()
    assert (again["previous"], again["current"], again["reloaded"]) == (v2, v2, False)

    # the inference log names the version that answered each request
    answered = {r.json()[0]["request_id"]: answered_version(r) for *_, r in sent}

    def logged() -> pd.DataFrame:
        frame = read_log(log_dir, versions["v1"].name)
        return frame if not frame.empty else pd.DataFrame(columns=["request_id", "model_version"])

    wait_until(lambda: set(answered) <= set(logged()["request_id"]), "the inference log")
    rows = logged()
    rows = rows[rows["request_id"].isin(answered)]
    wrong = rows[rows["model_version"] != rows["request_id"].map(answered)]
    assert wrong.empty, (
        f"logged with another version than answered:\n{wrong[['request_id', 'model_version']]}"
    )


def test_a_champion_with_another_schema_is_refused_and_the_old_one_keeps_serving(reloading, trained):
    client, versions, _ = reloading
    body = {"records": records(trained[1].iloc[:2])}
    serving = answered_version(client.post("/predict", json=body))
    Registry().promote(versions["v1"].name, versions["v3"].version)

    for _ in range(2):  # the refusal is remembered, not retried
        refused = client.post("/reload")
        assert refused.status_code == 409, refused.text
        answer = refused.json()
        assert (answer["previous"], answer["current"], answer["reloaded"]) == (serving, serving, False)
        assert versions["v3"].tag in answer["error"]
        assert "removed ['worst area']" in answer["error"]
        assert "restart" in answer["error"]
    still = client.post("/predict", json=body)
    assert still.status_code == 200, still.text
    assert answered_version(still) == serving


def test_the_poll_reloads_when_the_alias_moves(polling, trained, expected_proba):
    client, versions, log_dir = polling
    name, v2 = versions["v1"].name, versions["v2"].version
    with traffic(client, trained[1]) as sent:
        wait_until(lambda: len(sent) >= 20, "traffic")
        Registry().promote(name, v2)
        wait_until(lambda: any(answered_version(r) == v2 for *_, r in sent), "the poll to reload v2")
        settled = len(sent)
        wait_until(lambda: len(sent) >= settled + 20, "traffic after the reload")

    assert [r.status_code for *_, r in sent if r.status_code != 200] == []
    first_v2 = min(done for _, done, _, r in sent if answered_version(r) == v2)
    assert {answered_version(r) for start, _, _, r in sent if start > first_v2} == {v2}
    assert_each_answer_matches_its_version(sent, versions, expected_proba)

    # a new schema is refused by the poll too: logged once, v2 keeps serving
    Registry().promote(name, versions["v3"].version)
    time.sleep(1.0)  # five polls
    still = client.post("/predict", json={"records": records(trained[1].iloc[:1])})
    assert answered_version(still) == v2
    server_log = "".join(path.read_text() for path in log_dir.glob("server-*.log"))
    assert server_log.count(f"{versions['v3'].tag} has another schema") == 1


def shadow_of(client: httpx.Client) -> dict:
    return client.post("/info", json={}).json()["shadow"]


def challenge(client: httpx.Client, version: ModelVersion) -> None:
    """Put ``version`` in the shadow slot, as an operator does, and wait for the poll to serve it."""
    assert llmops(["models", "promote", version.tag, "--to", "challenger"]) == 0
    wait_until(lambda: shadow_of(client)["version"] == version.version, f"the shadow to serve {version.tag}")


def shadow_rows(log_dir: Path, name: str, ids: Iterable[str], count: int) -> list[dict]:
    """The shadow rows of the requests ``ids`` once ``count`` of them are in the log (flushed every 0.1 s)."""
    ids, rows = set(ids), []

    def found() -> bool:
        rows[:] = [r for r in read_rows(log_dir, name, roles=["shadow"]) if r["request_id"] in ids]
        return len(rows) >= count

    wait_until(found, f"{count} shadow rows in the log")
    return rows


def predict(client: httpx.Client, held_out: pd.DataFrame, first: int) -> tuple[httpx.Response, float]:
    """POST two held-out rows from ``first``; the response and its seconds."""
    began = time.monotonic()
    response = client.post("/predict", json={"records": records(held_out.iloc[first : first + 2])})
    return response, time.monotonic() - began


def test_the_shadow_follows_the_challenger_alias_and_answers_requests_again(polling, trained, expected_proba):
    """No challenger yet: no shadow. After `llmops models promote --to challenger` the poll serves it
    in the shadow slot: the champion's answers are its own (identical to its model's), and each
    request is answered again by the challenger, logged under the same request id and rows with
    the challenger's version and its own latency."""
    client, versions, log_dir = polling
    champion, challenger = versions["v2"], versions["v1"]  # the poll test left v2 the champion
    before = shadow_of(client)
    assert (before["ref"], before["version"], before["sampled"]) == ("challenger", None, 0)
    assert "challenger not found" in before["problem"]
    challenge(client, challenger)

    sent = [(first, predict(client, trained[1], first)[0]) for first in range(0, 12, 2)]
    assert [r.status_code for _, r in sent] == [200] * 6
    assert {answered_version(r) for _, r in sent} == {champion.version}
    assert_each_answer_matches_its_version([(0, 0, f, r) for f, r in sent], versions, expected_proba)
    wait_until(lambda: shadow_of(client)["answered"] == 6, "the challenger to answer the six requests")
    info = shadow_of(client)
    counts = (info["sampled"], info["failed"], info["dropped"], info["sample"], info["queue_cap"])
    assert counts == (6, 0, 0, 1.0, 2)

    classes, proba = expected_proba(challenger)
    ids = {r.json()[0]["request_id"]: first for first, r in sent}
    rows = shadow_rows(log_dir, champion.name, ids, 12)
    assert sorted((r["request_id"], r["row"]) for r in rows) == sorted((i, n) for i in ids for n in (0, 1))
    for row in rows:
        assert (row["model"], row["model_version"], row["status"], row["error"]) == (
            champion.name, challenger.version, 200, None
        )  # fmt: skip
        assert row["prediction"] == classes[int(np.argmax(proba[ids[row["request_id"]] + row["row"]]))]
        assert row["latency_ms"]["total"] > 0 and "features" not in row
    champions = read_log(log_dir, champion.name)  # the traffic: champion rows only, by default
    assert set(champions[champions["request_id"].isin(ids)]["model_version"]) == {champion.version}


def test_a_raising_or_a_slow_challenger_never_fails_nor_delays_the_champion(polling, trained):
    """A challenger that raises on every request, then one that takes SLOW_S per request, with a
    queue of two jobs: every champion answer is a 200 in far less than SLOW_S; the failures are
    logged as the shadow's rows, and what the full queue could not take is dropped and counted."""
    client, versions, log_dir = polling
    raising, slow = versions["v3"], versions["slow"]  # v3 lacks a column: a shadow may use fewer
    challenge(client, raising)
    answers = [predict(client, trained[1], first) for first in range(0, 10, 2)]
    assert [r.status_code for r, _ in answers] == [200] * 5 and max(s for _, s in answers) < SLOW_S / 2
    wait_until(lambda: shadow_of(client)["failed"] >= 5, "the raising challenger's five failures")
    ids = {r.json()[0]["request_id"] for r, _ in answers}
    failed = shadow_rows(log_dir, raising.name, ids, 10)  # two rows a request
    assert {(r["model_version"], r["status"]) for r in failed} == {(raising.version, 500)}
    assert all("failure injected at shadow.answer." in r["error"] for r in failed)

    challenge(client, slow)
    before = shadow_of(client)
    began = time.monotonic()
    answers = [predict(client, trained[1], first) for first in range(0, 16, 2)]
    took = time.monotonic() - began
    assert [r.status_code for r, _ in answers] == [200] * 8
    assert took < SLOW_S, f"8 answers took {took:.1f} s: the champion waited for its shadow"
    info = shadow_of(client)
    dropped = info["dropped"] - before["dropped"]
    assert info["sampled"] - before["sampled"] == 8 and dropped >= 8 - 3  # one in flight, two queued
    assert info["queued"] <= info["queue_cap"] == 2
    assert info["sampled"] == sum(info[k] for k in ("answered", "failed", "dropped", "queued", "in_flight"))
    challenge(client, versions["v1"])  # the queued jobs go to a quick challenger


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda s: None, None),
        (lambda s: s.features.pop("mean radius"), "features removed ['mean radius']"),
        (lambda s: s.features.update({"mean radius": "categorical"}), "features retyped ['mean radius']"),
        (lambda s: s.features.update({"mean radius": s.features.pop("mean radius")}), "features reordered"),
        (lambda s: s.classes.reverse(), "classes"),
    ],
    ids=["same", "removed", "retyped", "reordered", "classes"],
)
def test_only_the_very_same_schema_hot_reloads(trained, change, reason):
    from services.classifier import Served, _schema_change

    def served(version: str, schema: TableSchema) -> Served:
        meta = ModelVersion(name="m", version=version, created_at=0, path=".", labels={}, metadata={})
        return Served(meta, schema, model=None, classes=tuple(schema.classes))

    schema = trained[0]["v1"][1]
    new = schema.model_copy(deep=True)
    change(new)
    problem = _schema_change(served("a", schema), served("b", new))
    if reason is None:
        assert problem is None
    else:
        assert reason in problem
        assert problem.startswith("m:b has another schema than the served m:a")


def test_a_shadow_may_take_fewer_features_than_the_requests_carry_not_others(trained, monkeypatch):
    from services import classifier
    from services.classifier import Served, _not_a_shadow

    schema = trained[0]["v1"][1]
    monkeypatch.setattr(classifier, "SCHEMA", schema)  # the request model the service started with

    def served(changed: TableSchema) -> Served:
        meta = ModelVersion(name="m", version="c", created_at=0, path=".", labels={}, metadata={})
        return Served(meta, changed, model=None, classes=tuple(changed.classes))

    assert _not_a_shadow(None, served(trained[0]["v3"][1])) is None  # 'worst area' left out: fine
    other = schema.model_copy(deep=True)
    other.features["shoe size"] = "numeric"
    retyped = schema.model_copy(deep=True)
    retyped.features["mean radius"] = "categorical"
    for changed, column in ((other, "shoe size"), (retyped, "mean radius")):
        problem = _not_a_shadow(None, served(changed))
        assert problem.startswith("m:c cannot shadow this service") and repr(column) in problem
