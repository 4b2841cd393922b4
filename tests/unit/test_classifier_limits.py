"""The classifier's batching limits and what a client sees when a request is shed, without a server
(tests/integration/test_classifier_service.py serves the largest request among concurrent ones)."""

import logging
import sys

import pytest
from bentoml.exceptions import ServiceUnavailable
from starlette.responses import JSONResponse
from starlette.testclient import TestClient

from llmops.serving import SettingsError
from services.classifier import Settings, ShedWithRetryAfter

BENTOML_LOG = logging.getLogger("bentoml._internal.server.http_app")  # where BentoML logs a failed request


def test_a_batch_smaller_than_the_largest_request_is_a_bad_setting():
    with pytest.raises(SettingsError, match=r"LLMOPS_MAX_BATCH_SIZE: .*at least LLMOPS_MAX_RECORDS \(1000\)"):
        Settings.from_env({"LLMOPS_MAX_BATCH_SIZE": "64"})
    assert Settings.from_env({"LLMOPS_MAX_BATCH_SIZE": "64", "LLMOPS_MAX_RECORDS": "64"}).max_batch_size == 64
    assert Settings.from_env({}).max_batch_size == Settings.from_env({}).max_records == 1000


def failed_request(error: Exception) -> logging.LogRecord:
    """The record BentoML logs for a /predict request that raised ``error``."""
    try:
        raise error
    except type(error):
        exc_info = sys.exc_info()
    return BENTOML_LOG.makeRecord(
        BENTOML_LOG.name, logging.ERROR, __file__, 0, "Exception on /predict [POST]", (), exc_info
    )


async def shedding_bentoml(scope, receive, send):
    """What BentoML answers a request its batch dispatcher sheds: the dispatcher's fallback raises
    ServiceUnavailable, which BentoML answers 503 "unexpected error" and logs at ERROR."""
    await JSONResponse(
        {"error": "An unexpected error has occurred, please check the server log."},
        status_code=503,
        headers={"X-BentoML-Request-ID": "0123456789abcdef"},
    )(scope, receive, send)


def test_a_shed_request_is_a_503_with_retry_after_and_one_warning_line(caplog):
    with caplog.at_level(logging.WARNING, logger="bentoml.service.classifier"):
        answer = TestClient(ShedWithRetryAfter(shedding_bentoml)).post("/predict", json={"records": []})
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
    assert answer.json() == {"error": "the service is over its batching latency budget: retry"}
    assert answer.headers["X-BentoML-Request-ID"] == "0123456789abcdef"
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "shed /predict (request 0123456789abcdef): queued past LLMOPS_MAX_LATENCY_MS; 503")
    ]
    # BentoML's ERROR with a traceback is dropped: the line above says it
    assert not BENTOML_LOG.filter(failed_request(ServiceUnavailable("process is overloaded")))


def test_other_answers_pass_unchanged():
    reload = TestClient(ShedWithRetryAfter(shedding_bentoml)).post("/reload")
    assert reload.status_code == 503 and "Retry-After" not in reload.headers
    assert reload.json()["error"].startswith("An unexpected error")

    async def ok(scope, receive, send):
        await JSONResponse([{"prediction": "benign"}])(scope, receive, send)

    answer = TestClient(ShedWithRetryAfter(ok)).post("/predict", json={})
    assert answer.status_code == 200 and answer.json() == [{"prediction": "benign"}]
    assert BENTOML_LOG.filter(failed_request(ValueError("a bug")))  # a server error keeps its traceback
