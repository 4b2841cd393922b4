"""The classifier service run for real: `bentoml serve` on a free port, spoken to over HTTP."""

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmops.inference_log import read_log
from llmops.tabular.classifier import load_model
from llmops.tabular.data import infer_schema, load_table, normalize
from tests.classifier_release import fit_classifier, register_passing_classifier
from tests.conftest import serve_bento
from tests.otlp_receiver import otlp_receiver

pytestmark = [pytest.mark.slow, pytest.mark.integration]
HELD_OUT = 40  # rows never trained on; the requests use them
API_KEY = "test-key-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def champion():
    """A small logistic regression on the bundled data, registered and promoted."""
    model, schema = fit_classifier(held_out=HELD_OUT)
    version = register_passing_classifier("svc-" + uuid.uuid4().hex[:8], model, schema)
    held_out = load_table().iloc[-HELD_OUT:].drop(columns="target").reset_index(drop=True)
    return version, held_out


def serve(model_name: str, log_dir: Path, **env: str):
    """`bentoml serve` the classifier; yields an httpx client once /readyz answers 200."""
    return serve_bento("services.classifier:Classifier", log_dir, LLMOPS_CLASSIFIER_RELEASE=model_name, **env)


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("inference-log")


@pytest.fixture(scope="module")
def traces():
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def server(champion, log_dir):
    version, _ = champion
    with serve(version.name, log_dir) as client:
        yield client


@pytest.fixture(scope="module")
def secured_log_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("secured-log")


@pytest.fixture(scope="module")
def secured_server(champion, secured_log_dir, traces):
    """With a key, and traced (the load tests use the other server)."""
    version, _ = champion
    with serve(version.name, secured_log_dir, LLMOPS_API_KEY=API_KEY, **traces.env) as client:
        yield client


def records(frame: pd.DataFrame) -> list[dict]:
    """JSON-ready rows; NaN becomes null."""
    return [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


def expected(version, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from llmops.tabular.data import TableSchema

    model = load_model(version.path)
    inputs = normalize(frame, TableSchema.model_validate(version.read_json("schema.json")))
    return model.predict(inputs), model.predict_proba(inputs), [str(c) for c in model.classes_]


def assert_matches(answer: list[dict], version, frame: pd.DataFrame) -> None:
    labels, proba, classes = expected(version, frame)
    assert [a["prediction"] for a in answer] == list(labels)
    got = np.array([[a["probabilities"][c] for c in classes] for a in answer])
    np.testing.assert_allclose(got, proba, rtol=0, atol=1e-9)
    assert {(a["model"], a["model_version"]) for a in answer} == {(version.name, version.version)}


def test_predictions_equal_the_registered_model(server, champion):
    version, held_out = champion
    rows = held_out.iloc[:20].copy()
    rows.loc[0, "mean radius"] = np.nan  # a missing value is sent as null and imputed
    response = server.post("/predict", json={"records": records(rows)})
    assert response.status_code == 200, response.text
    assert len(response.json()) == 20
    assert_matches(response.json(), version, rows)


@pytest.mark.parametrize(
    ("change", "column"),
    [
        (lambda r: r.pop("mean radius"), "mean radius"),
        (lambda r: r.update({"shoe size": 42.0}), "shoe size"),
        (lambda r: r.update({"worst area": "abc"}), "worst area"),
        (lambda r: r.update({"mean texture": True}), "mean texture"),
    ],
    ids=["missing", "unknown", "wrong-type", "bool-for-number"],
)
def test_a_bad_column_is_a_400_naming_it(server, champion, change, column):
    _, held_out = champion
    good, bad = records(held_out.iloc[:2])
    change(bad)
    response = server.post("/predict", json={"records": [good, bad]})
    assert response.status_code == 400, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [["records", 1, column]]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b'{"records": []}', "application/json", 400, "at least 1 item"),
        (b'{"rows": [{"mean radius": 1}]}', "application/json", 400, "Field required"),
        (b"mean radius=1", "application/json", 400, "Invalid JSON"),
        (b"{", None, 400, "Invalid JSON"),
        (b"mean radius=1", "application/x-www-form-urlencoded", 415, "application/json"),
        (b"--x\r\n", "multipart/form-data", 415, "application/json"),
    ],
    ids=["empty-batch", "no-records", "not-json", "truncated", "form", "multipart-no-boundary"],
)
def test_malformed_requests_are_4xx_with_a_message(server, body, content_type, status, message):
    headers = {"Content-Type": content_type} if content_type else {}
    response = server.post("/predict", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.text


def test_every_prediction_reaches_the_inference_log(server, champion, log_dir):
    version, held_out = champion
    rows = held_out.iloc[20:23]
    answer = server.post("/predict", json={"records": records(rows)}).json()
    request_id = answer[0]["request_id"]
    deadline = time.monotonic() + 10
    while (logged := _logged(log_dir, version.name, request_id)).empty and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(logged["row"]) == [0, 1, 2]
    assert set(logged["model_version"]) == {version.version}
    assert list(logged["prediction"]) == [a["prediction"] for a in answer]
    assert list(logged["probability"]) == [a["probabilities"][a["prediction"]] for a in answer]
    pd.testing.assert_frame_equal(
        logged[list(rows.columns)].reset_index(drop=True), rows.reset_index(drop=True), check_dtype=False
    )


def _logged(log_dir: Path, model_name: str, request_id: str) -> pd.DataFrame:
    frame = read_log(log_dir, model_name)
    return frame[frame["request_id"] == request_id] if not frame.empty else frame


def _log_lines(log_dir: Path, request_id: str) -> tuple[list[str], str]:
    """The server log's lines that name the request (waiting up to 5 s for one), and the whole log."""
    deadline = time.monotonic() + 5
    while True:
        server_log = "".join(path.read_text() for path in log_dir.glob("server-*.log"))
        lines = [line for line in server_log.splitlines() if f"(request {request_id})" in line]
        if lines or time.monotonic() > deadline:
            return lines, server_log
        time.sleep(0.1)


def test_concurrent_requests_all_get_their_own_answers(server, champion):
    version, held_out = champion
    # 64 requests of 1-3 rows each, 16 at a time: the server batches rows across requests
    slices = [held_out.iloc[i % 38 : i % 38 + 1 + i % 3] for i in range(64)]
    with ThreadPoolExecutor(16) as pool:
        responses = list(
            pool.map(lambda rows: server.post("/predict", json={"records": records(rows)}), slices)
        )
    assert [r.status_code for r in responses] == [200] * 64
    for rows, response in zip(slices, responses, strict=True):
        assert_matches(response.json(), version, rows)
    assert len({r.json()[0]["request_id"] for r in responses}) == 64


def test_api_key_guards_predict_and_reload_but_not_the_probes(secured_server, secured_log_dir, champion):
    version, held_out = champion
    body = {"records": records(held_out.iloc[:1])}
    key = {"Authorization": f"Bearer {API_KEY}"}
    assert secured_server.post("/predict", json=body).status_code == 401
    wrong = secured_server.post("/predict", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert "API key" in wrong.json()["error"]
    right = secured_server.post("/predict", json=body, headers=key)
    assert right.status_code == 200, right.text
    assert secured_server.post("/reload").status_code == 401
    reload = secured_server.post("/reload", headers=key)
    assert reload.status_code == 200, reload.text
    assert reload.json()["current"] == version.version and reload.json()["reloaded"] is False
    for probe in ("/readyz", "/livez", "/metrics"):
        assert secured_server.get(probe).status_code == 200, probe
    server_log = "".join(path.read_text() for path in secured_log_dir.glob("server-*.log"))
    assert "Service Classifier initialized" in server_log
    assert API_KEY not in server_log


def test_a_prediction_is_a_trace_naming_its_release(secured_server, champion, traces):
    version, held_out = champion
    key = {"Authorization": f"Bearer {API_KEY}"}
    answer = secured_server.post("/predict", json={"records": records(held_out.iloc[:3])}, headers=key).json()
    request_id = answer[0]["request_id"]
    mine = lambda s: s.attributes.get("llmops.request_id") == request_id  # noqa: E731
    (request,) = [s for s in traces.wait_for(lambda spans: any(map(mine, spans))) if mine(s)]
    spans = traces.wait_for(
        lambda spans: {"predict", "log"} <= {s.name for s in spans if s.trace_id == request.trace_id}
    )
    trace = {s.name: s for s in spans if s.trace_id == request.trace_id}
    assert request.service == "Classifier" and request.attributes["llmops.classifier.records"] == 3
    assert trace["log"].parent_id == trace["predict"].span_id
    assert trace["predict"].parent_id == request.span_id
    assert trace["predict"].attributes == {
        "llmops.release.name": version.name, "llmops.release.alias": "champion",
        "llmops.release.version": version.version, "llmops.classifier.records": 3,
    }  # fmt: skip


def test_metrics_count_predictions(server):
    metrics = server.get("/metrics").text
    assert 'endpoint="/predict"' in metrics
    assert "adaptive_batch_size" in metrics


# ---- hardening (issue 11): each test names the finding it guards --------------------------------


def test_a_huge_finite_value_is_a_400_naming_the_column_and_the_range(server, champion):
    """Finding 1: 1.7976931348623157e308 passed validation and the model call answered 500."""
    _, held_out = champion
    good, bad = records(held_out.iloc[:2])
    bad["smoothness error"] = 1.7976931348623157e308
    response = server.post("/predict", json={"records": [good, bad]})
    assert response.status_code == 400, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["records", 1, "smoothness error"]
    assert "must lie within [" in error["msg"] and "float64" in error["msg"]


def test_good_requests_sent_with_an_out_of_range_one_all_get_200(server, champion):
    """Finding 2 (validation path): 12 good requests and 1 overflowing one, sent together, 10 rounds."""
    _, held_out = champion
    good = [{"records": records(held_out.iloc[i : i + 2])} for i in range(12)]
    bad_record = dict(records(held_out.iloc[:1])[0], **{"worst area": -1.7e308})
    for _ in range(10):
        with ThreadPoolExecutor(13) as pool:
            answers = list(
                pool.map(lambda body: server.post("/predict", json=body), [*good, {"records": [bad_record]}])
            )
        assert [a.status_code for a in answers] == [200] * 12 + [400], [a.text[:200] for a in answers]
        assert answers[-1].json()["detail"][0]["loc"] == ["records", 0, "worst area"]


def test_a_request_of_the_largest_size_is_served_among_concurrent_traffic(server, champion):
    """LLMOPS_MAX_RECORDS records while 8 clients send 1-3: a batch holds the largest request whole
    (in 64-record batches run one after another on its latency budget, it was shed with 503)."""
    version, held_out = champion
    largest = pd.concat([held_out] * 25, ignore_index=True)  # 1,000 records, the default maximum
    stop = threading.Event()

    def traffic(k: int) -> list[int]:
        statuses = []
        while not stop.is_set():
            rows = held_out.iloc[k : k + 1 + k % 3]
            statuses.append(server.post("/predict", json={"records": records(rows)}).status_code)
        return statuses

    with ThreadPoolExecutor(8) as pool:
        clients = [pool.submit(traffic, k) for k in range(8)]
        try:
            time.sleep(0.3)  # the clients' requests are queued and batched when the large ones arrive
            answers = [server.post("/predict", json={"records": records(largest)}) for _ in range(3)]
        finally:
            stop.set()
        small = [status for client in clients for status in client.result()]
    assert [a.status_code for a in answers] == [200] * 3, [a.text[:200] for a in answers]
    for answer in answers:
        assert_matches(answer.json(), version, largest)
    assert len(small) >= 8 and set(small) == {200}


@pytest.fixture(scope="module")
def fragile(tmp_path_factory):
    """A model that takes 1/x of every feature: a record with a 0 passes validation (it is in range)
    but makes the model call raise ("Input X contains infinity"), as any estimator may for an input
    it cannot take. Registered in the real store; held-out rows are shifted to stay positive."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    raw = load_table()
    schema = infer_schema(raw, "target")
    data = normalize(raw, schema)
    features = data[list(schema.features)] + 1.0
    model = make_pipeline(FunctionTransformer(np.reciprocal), LogisticRegression(max_iter=2000))
    model.fit(features.iloc[:-HELD_OUT], data[schema.target].iloc[:-HELD_OUT])
    name = "fragile-" + uuid.uuid4().hex[:8]
    register_passing_classifier(name, model, schema, run_pathspec="TestFlow/2", candidate="reciprocal")
    log_dir = tmp_path_factory.mktemp("fragile-log")
    with serve(name, log_dir) as client:
        yield client, features.iloc[-HELD_OUT:].reset_index(drop=True), log_dir


def test_a_record_the_model_cannot_score_fails_only_its_own_request(fragile):
    """Finding 2 (model path): a validated record that makes the model call fail is isolated."""
    client, held_out, log_dir = fragile
    good = [{"records": records(held_out.iloc[i : i + 3])} for i in range(12)]
    bad_body = {"records": records(held_out.iloc[:2])}
    bad_body["records"][1]["mean texture"] = 0.0  # in range, but 1/0 is inf inside the model
    for _ in range(3):
        with ThreadPoolExecutor(13) as pool:
            answers = list(pool.map(lambda body: client.post("/predict", json=body), [bad_body, *good]))
        assert [a.status_code for a in answers] == [400] + [200] * 12, [a.text[:200] for a in answers]
        assert all(len(a.json()) == 3 for a in answers[1:])
        [error] = answers[0].json()["detail"]
        assert error["loc"] == ["records", 1]
        assert "could not score" in error["msg"] and "infinity" in error["msg"]
    server_log = "".join(path.read_text() for path in log_dir.glob("server-*.log"))
    assert "record 1 could not be scored" in server_log
    assert "Traceback" not in server_log


def test_an_oversized_body_is_413_before_parsing(server):
    """Finding 7: no body limit. The default is 4 MiB (LLMOPS_MAX_BODY_BYTES); declared or chunked."""
    big = b'{"records": [' + b"1," * (2_200_000) + b"1]}"
    declared = server.post("/predict", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413, declared.text
    assert "LLMOPS_MAX_BODY_BYTES" in declared.json()["error"]
    chunked = server.post(
        "/predict",
        content=(big[i : i + 65536] for i in range(0, len(big), 65536)),  # no Content-Length
        headers={"Content-Type": "application/json"},
    )
    assert chunked.status_code == 413, chunked.text
    assert server.get("/readyz").status_code == 200


def test_client_errors_are_one_warning_line_with_the_request_id(server, log_dir):
    """Finding 8: every 400 was logged at ERROR with a full traceback."""
    answer = server.post("/predict", json={"records": [{"mean radius": "abc"}]})
    assert answer.status_code == 400
    lines, server_log = _log_lines(log_dir, answer.headers["X-BentoML-Request-ID"])
    assert len(lines) == 1, server_log[-2000:]
    assert "[WARNING]" in lines[0] and "client error 400 on /predict [POST]" in lines[0]
    assert "records.0.mean radius" in lines[0] and "abc" not in lines[0]  # where, never the input
    assert "Traceback" not in server_log


def test_the_openapi_document_says_what_the_service_answers(server):
    """Finding 4: detail declared a string (is a list), /reload's error not nullable, body not required."""
    doc = server.get("/docs.json").json()
    schemas = doc["components"]["schemas"]
    assert schemas["InvalidArgument"]["properties"]["detail"]["type"] == "array"
    error = schemas["ReloadIODescriptor"]["properties"]["error"]
    assert error.get("nullable") or {"type": "null"} in error.get("anyOf", [])
    predict = doc["paths"]["/predict"]["post"]
    assert predict["requestBody"]["required"] is True
    assert {"400", "413", "415"} <= set(predict["responses"])
    assert "403" in doc["paths"]["/reload"]["post"]["responses"]  # loopback-only without a key
    radius = schemas["Record"]["properties"]["mean radius"]["anyOf"][0]
    assert radius["type"] == "number" and radius["maximum"] < 1.8e308


def test_json_nested_a_thousand_deep_is_400_not_500(server):
    deep = b'{"records": [{"mean radius": ' + b"[" * 1000 + b"]" * 1000 + b"}]}"
    reply = server.post("/predict", content=deep, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400 and "deeper than 64 levels" in reply.json()["error"]


def test_fuzz_the_classifier_openapi(server):
    """A bounded schemathesis fuzz of every operation: no 5xx, answers as documented, 4xx name fields,
    and every request the document allows is answered 2xx."""
    from tests.fuzz import fuzz_service

    report = fuzz_service(str(server.base_url).rstrip("/"), examples=40)
    print(report.summary())
    assert report.requests >= 150, report.summary()
    assert report.server_errors == 0 and report.refused_valid == 0 and report.problems == [], report.summary()


def test_reload_trusts_no_forwarded_client_unless_a_proxy_is_configured(server):
    """Without LLMOPS_TRUSTED_PROXIES the client is the socket peer: a loopback request that says
    it was forwarded (a proxy on this machine passing a client's header through) is not local, and
    a spoofed ``X-Forwarded-For: 127.0.0.1`` opens nothing (uvicorn trusted 127.0.0.1 by default)."""
    assert server.post("/reload").status_code == 200  # from this machine, no forwarding header
    for header in ("127.0.0.1", "10.1.2.3"):
        refused = server.post("/reload", headers={"X-Forwarded-For": header})
        assert refused.status_code == 403, refused.text
        assert "LLMOPS_API_KEY" in refused.json()["error"]
