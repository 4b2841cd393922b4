"""The shared service layer (llmops.serving) and the classifier's input checks, without a server:
real ASGI middlewares driven through httpx's ASGI transport, real scikit-learn models."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys

import httpx
import numpy as np
import pytest
from pydantic import BaseModel, SecretStr, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from llmops.serving import (
    MAX_JSON_DEPTH,
    BodyLimit,
    ClientErrorsAsOneLine,
    LoopbackOnly,
    SettingsError,
    json_depth,
    protect,
)
from llmops.tabular.classifier import build_pipeline, candidates, input_limits, predict_proba_rows
from llmops.tabular.data import infer_schema, load_table, normalize


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"bytes": len(await request.body())})


APP = Starlette(
    routes=[Route("/reload", _echo, methods=["POST"]), Route("/predict", _echo, methods=["POST"])]
)


def call(app, path: str, client: tuple[str, int] = ("127.0.0.1", 5000), **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
            return await http.post(path, **kwargs)

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("client", "path", "status"),
    [
        (("10.1.2.3", 5000), "/reload", 403),
        (("192.168.0.9", 5000), "/reload", 403),
        (("127.0.0.1", 5000), "/reload", 200),
        (("::1", 5000), "/reload", 200),
        (("10.1.2.3", 5000), "/predict", 200),
    ],
)
def test_reload_without_a_key_answers_only_loopback_clients(client, path, status):
    """Finding 9: with no API key, /reload was open to the network."""
    response = call(LoopbackOnly(APP, paths=frozenset({"/reload"})), path, client=client, json={})
    assert response.status_code == status, response.text
    if status == 403:
        assert "LLMOPS_API_KEY" in response.json()["error"]


def test_the_body_limit_answers_413_for_declared_and_chunked_bodies():
    """Finding 7: no request-body limit; the app never sees an oversized body."""
    app = BodyLimit(APP, max_bytes=1000)
    assert call(app, "/predict", content=b"x" * 1000).json() == {"bytes": 1000}
    assert call(app, "/predict", content=b"x" * 1001).status_code == 413

    async def chunks():
        for _ in range(5):
            yield b"y" * 300

    assert call(app, "/predict", content=chunks()).status_code == 413  # no Content-Length


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        (b'{"a": 1}', 1),
        (b"[[], [[{}]], []]", 4),
        (b'{"q": "[[[[ {{{{ \\" [[[[", "r": ["\\\\", [1]]}', 3),  # brackets in strings, escapes
        (b"[" * 1000, 1000),  # not even JSON: how deep a parser would get before the error
        (b'"' + b"[" * 1000, 0),  # one open string: a parser never leaves it
        (b"", 0),
    ],
)
def test_json_depth_counts_brackets_outside_strings(body, depth):
    assert json_depth(body) == depth


def test_json_nested_too_deep_is_400_before_it_is_parsed():
    """About 1,000 levels of nesting overflowed the parsers' recursion into a 500."""
    app = BodyLimit(APP, max_bytes=100_000, openai_prefix="/v1")
    deep = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert call(app, "/predict", content=deep).json() == {"bytes": 2 * MAX_JSON_DEPTH}
    refused = call(app, "/predict", content=b'{"x":' + b"[" * 1000 + b"]" * 1000 + b"}")
    assert refused.status_code == 400 and f"deeper than {MAX_JSON_DEPTH}" in refused.json()["error"]
    openai = call(app, "/v1/completions", content=b"[" * (MAX_JSON_DEPTH + 1))
    assert openai.status_code == 400 and openai.json()["error"]["code"] == "json_too_deep"


class _Service:
    def __init__(self) -> None:
        self.middlewares: list = []

    def add_asgi_middleware(self, cls, **options) -> None:
        self.middlewares.append((cls, options))


@pytest.mark.parametrize(
    ("host", "key", "warned"),
    [("0.0.0.0", None, True), ("127.0.0.1", None, False), ("0.0.0.0", SecretStr("k"), False)],
)
def test_a_worker_on_a_non_loopback_address_without_a_key_warns_at_start(
    host, key, warned, monkeypatch, caplog
):
    """Finding 9: a service started on 0.0.0.0 without a key said nothing. BentoML hands each
    worker its bound socket as --fd N; the socket here is bound, never listening."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        monkeypatch.setattr(sys, "argv", ["worker", "--fd", str(sock.fileno()), "--service-name", "x"])
        with caplog.at_level(logging.WARNING, logger="bentoml.llmops.serving"):
            protect(_Service(), key)
        assert sock.fileno() >= 0  # still open: the worker's socket must not be closed
    assert any("without LLMOPS_API_KEY" in r.getMessage() for r in caplog.records) is warned


def test_client_errors_become_one_warning_line_and_server_errors_keep_their_traceback():
    """Finding 8: BentoML logs every 400 at ERROR with a traceback."""

    class Body(BaseModel):
        age: int

    try:
        Body.model_validate({"age": "old, secret-value"})
    except ValidationError as exc:
        client = exc
    records = []
    for error in (client, RuntimeError("boom")):
        record = logging.LogRecord(
            "bentoml._internal.server.http_app", logging.ERROR, __file__, 1,
            "Exception on %s [%s]", ("/predict", "POST"), (type(error), error, None),
        )  # fmt: skip
        assert ClientErrorsAsOneLine().filter(record)
        records.append(record)
    one_line, server_error = records
    assert one_line.levelno == logging.WARNING and one_line.exc_info is None
    assert one_line.getMessage().startswith("client error 400 on /predict [POST] (request ")
    assert "age:" in one_line.getMessage() and "secret-value" not in one_line.getMessage()
    assert server_error.levelno == logging.ERROR and server_error.exc_info is not None


@pytest.fixture(scope="module")
def cancer():
    raw = load_table()
    schema = infer_schema(raw, "target")
    return schema, normalize(raw, schema)


@pytest.mark.parametrize(
    ("family", "dtype"), [("random_forest", "float32"), ("logistic_regression", "float64")]
)
def test_input_limits_follow_the_estimators_dtype_and_scaling(cancer, family, dtype):
    """Finding 1: float64's limit for most models, float32's for tree ensembles; every value within
    the limits is scored, one beyond (for the float32 model) is what made the model call fail."""
    schema, data = cancer
    model = build_pipeline(schema, candidates([family])[0])
    model.fit(data[list(schema.features)].iloc[:200], data[schema.target].iloc[:200])
    found, limits = input_limits(model, schema)
    assert found == dtype and set(limits) == set(schema.numeric)
    rows = data[list(schema.features)].iloc[:2].copy()
    for column, (low, high) in limits.items():
        rows.loc[rows.index[0], column], rows.loc[rows.index[1], column] = high, low
    assert np.isfinite(model.predict_proba(rows)).all()
    if dtype == "float32":
        column = "smoothness error"
        rows.loc[rows.index[0], column] = limits[column][1] * 1e5  # beyond float32 once scaled
        with pytest.raises(ValueError, match="infinity or a value too large"):
            model.predict_proba(rows)


def test_a_batch_with_rows_the_model_cannot_score_fails_only_those_rows(cancer):
    """Finding 2: one bad record failed every request batched with it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    schema, data = cancer
    features = data[list(schema.features)] + 1.0
    model = make_pipeline(FunctionTransformer(np.reciprocal), LogisticRegression(max_iter=2000))
    model.fit(features.iloc[:300], data[schema.target].iloc[:300])
    batch = features.iloc[300:340].reset_index(drop=True)
    batch.loc[[3, 17, 18], "mean texture"] = 0.0  # 1/0: the model raises for these rows
    proba, failures = predict_proba_rows(model, batch)
    assert sorted(failures) == [3, 17, 18]
    assert all("infinity" in why for why in failures.values())
    good = [i for i in range(len(batch)) if i not in failures]
    np.testing.assert_allclose(proba[good], model.predict_proba(batch.iloc[good]), rtol=0, atol=1e-12)
    assert np.isnan(proba[sorted(failures)]).all()
    clean, none = predict_proba_rows(model, batch.iloc[good])
    assert none == {} and np.isfinite(clean).all()


def test_one_settings_helper_names_variables_and_honours_renamed_ones(caplog):
    from pydantic import BaseModel, Field

    from llmops.errors import LlmopsError
    from llmops.serving import settings_from_env

    class Settings(BaseModel):
        classifier_release: str = "classifier"
        classifier_version: str | None = None
        max_k: int = Field(20, le=50)

    env = {"LLMOPS_MODEL": "old-name", "LLMOPS_CLASSIFIER_VERSION": "", "LLMOPS_MAX_K": "7"}
    settings = settings_from_env(Settings, env)
    assert (settings.classifier_release, settings.classifier_version, settings.max_k) == ("old-name", None, 7)
    assert "LLMOPS_MODEL is deprecated: set LLMOPS_CLASSIFIER_RELEASE instead" in caplog.text
    both = settings_from_env(Settings, {"LLMOPS_MODEL": "old", "LLMOPS_CLASSIFIER_RELEASE": "new"})
    assert both.classifier_release == "new"  # the new name wins
    with pytest.raises(LlmopsError, match=r"LLMOPS_MAX_K: Input should be less than or equal to 50"):
        settings_from_env(Settings, {"LLMOPS_MAX_K": "99"})


def test_with_no_trusted_proxy_a_forwarded_request_is_not_local():
    """A peer on this machine that forwards (X-Forwarded-For, Forwarded) is a proxy: its client
    may be anyone. With a trusted proxy, uvicorn has already put the forwarded client in scope."""
    plain = LoopbackOnly(APP, paths=frozenset({"/reload"}))
    for header in ({"X-Forwarded-For": "127.0.0.1"}, {"Forwarded": "for=127.0.0.1"}):
        assert call(plain, "/reload", headers=header, json={}).status_code == 403
    trusting = LoopbackOnly(APP, paths=frozenset({"/reload"}), trusted_proxies="127.0.0.1")
    assert call(trusting, "/reload", headers={"X-Forwarded-For": "127.0.0.1"}, json={}).status_code == 200
    forwarded_remote = call(trusting, "/reload", client=("10.1.2.3", 5000), json={})
    assert forwarded_remote.status_code == 403


def test_trusted_proxies_reach_uvicorn_and_a_bad_entry_is_named(monkeypatch):
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")  # whatever was there, the setting decides
    monkeypatch.delenv("LLMOPS_TRUSTED_PROXIES", raising=False)
    protect(_Service(), SecretStr("k"))
    assert os.environ["FORWARDED_ALLOW_IPS"] == ""
    monkeypatch.setenv("LLMOPS_TRUSTED_PROXIES", "10.0.0.5, 192.168.0.0/16")
    service = _Service()
    protect(service, None)
    assert os.environ["FORWARDED_ALLOW_IPS"] == "10.0.0.5,192.168.0.0/16"
    loopback = dict(service.middlewares)[LoopbackOnly]
    assert loopback["trusted_proxies"] == "10.0.0.5,192.168.0.0/16"
    monkeypatch.setenv("LLMOPS_TRUSTED_PROXIES", "10.0.0.5,proxy.local")
    with pytest.raises(SettingsError, match=r"LLMOPS_TRUSTED_PROXIES: .*'proxy.local' is not an IP"):
        protect(_Service(), None)
