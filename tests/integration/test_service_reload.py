"""Hot reload run for real: a new champion is served while requests keep coming, none failing."""

import contextlib
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pandas as pd
import pytest

from llmops.inference_log import read_log
from llmops.registry import ModelVersion, Registry
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


@pytest.fixture(scope="module")
def polling(trained, tmp_path_factory):
    """A server of v1 that polls its alias every 0.2 s."""
    versions = register("poll", trained[0])
    log_dir = tmp_path_factory.mktemp("poll-log")
    with serve(versions["v1"].name, log_dir, LLMOPS_RELOAD_POLL_S="0.2") as client:
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
