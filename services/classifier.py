"""Serve the registered tabular classifier over HTTP with adaptive batching.

    LLMOPS_MODEL=classifier bentoml serve services.classifier:Classifier --port 3000
    curl -s localhost:3000/predict -H 'Content-Type: application/json' \\
        -d '{"records": [{"mean radius": 14.1, "mean texture": 19.3, ...}]}'

Environment: LLMOPS_MODEL (registry name), LLMOPS_MODEL_VERSION (a version or alias;
default the champion), LLMOPS_API_KEY (optional bearer key for /predict),
LLMOPS_INFERENCE_LOG_DIR, LLMOPS_MAX_BATCH_SIZE, LLMOPS_MAX_LATENCY_MS,
LLMOPS_MAX_RECORDS (per request), LLMOPS_TIMEOUT_S.

The request model is built at import from the served version's ``schema.json``, so BentoML
validates every request (missing, unknown or mistyped column → 400 naming it) *before*
the request joins a batch: one bad request can never fail the batch it would have shared.
``/predict`` itself is the batchable API, because BentoML batches only HTTP calls to a
``batchable=True`` method. /livez, /readyz and /metrics are BentoML's and stay open.
"""

import hmac
import logging
import os
import uuid
from pathlib import Path
from typing import Annotated, Any

import bentoml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    create_model,
)
from starlette.responses import JSONResponse

from llmops.registry import CHAMPION, ModelVersion, Registry, RegistryError

logger = logging.getLogger("bentoml.service.classifier")


class Settings(BaseModel):
    """Service settings; each field is read from ``LLMOPS_<FIELD>`` (see the module docstring)."""

    model: str = "classifier"
    model_version: str | None = None  # None: whatever the champion alias points at
    api_key: SecretStr | None = None
    inference_log_dir: Path | None = None
    max_batch_size: int = Field(64, gt=1)
    max_latency_ms: int = Field(1000, gt=0)  # a request queued longer than this is shed (503)
    max_records: int = Field(1000, ge=1)
    timeout_s: float = Field(30.0, gt=0)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        names = {field: f"LLMOPS_{field.upper()}" for field in cls.model_fields}
        try:
            return cls.model_validate({f: env[var] for f, var in names.items() if env.get(var)})
        except ValidationError as exc:
            problems = "; ".join(f"{names[str(e['loc'][0])]}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"bad service setting: {problems}") from None


class RecordBase(BaseModel):
    """One input row. Fields are added per schema; ``_request_id``/``_row`` tag it for the log."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
    _request_id: str = PrivateAttr("")
    _row: int = PrivateAttr(0)


class AnyRecord(RecordBase):
    """The request model when no version can be resolved at import (``bentoml build``)."""

    model_config = ConfigDict(extra="allow")


class Prediction(BaseModel):
    prediction: str
    probabilities: dict[str, float]  # class -> probability, summing to 1
    model: str
    model_version: str
    request_id: str  # shared by the records of one request; the key into the inference log


def _resolve(settings: Settings) -> tuple[ModelVersion | None, type[RecordBase]]:
    """The version to serve and a request model built from its schema (permissive if none)."""
    from llmops.data import TableSchema

    try:
        version = Registry().get(settings.model, settings.model_version or CHAMPION)
    except RegistryError as exc:  # e.g. `bentoml build` on a machine without a champion
        logger.warning("no model to serve (%s): the service cannot start until there is one", exc)
        return None, AnyRecord
    schema = TableSchema.model_validate(version.read_json("schema.json"))
    # field names must be identifiers, column names need not be ("mean radius"): alias them
    fields: dict[str, Any] = {
        f"c{i}": (
            float | None if kind == "numeric" else str | None,
            Field(alias=column, title=column, strict=True, allow_inf_nan=False)
            if kind == "numeric"
            else Field(alias=column, title=column),
        )
        for i, (column, kind) in enumerate(schema.features.items())
    }
    return version, create_model("Record", __base__=RecordBase, **fields)


def _stamp_request(records: list[RecordBase]) -> list[RecordBase]:
    """Runs once per validated request, before batching: tag its rows for the inference log."""
    request_id = uuid.uuid4().hex
    for row, record in enumerate(records):
        record._request_id, record._row = request_id, row
    return records


SETTINGS = Settings.from_env()
SERVED, Record = _resolve(SETTINGS)
Records = Annotated[
    list[Record],
    Field(min_length=1, max_length=SETTINGS.max_records),
    AfterValidator(_stamp_request),
]


async def _reject(
    scope: dict[str, Any],
    receive: Any,
    send: Any,
    status: int,
    error: str,
    headers: dict[str, str] | None = None,
) -> None:
    await JSONResponse({"error": error}, status_code=status, headers=headers)(scope, receive, send)


class JSONOnly:
    """ASGI middleware: answer form posts 415. BentoML would parse them as forms (and a
    multipart body without a boundary as a 500); ``curl -d`` sends one by default."""

    FORM_TYPES = frozenset({b"multipart/form-data", b"application/x-www-form-urlencoded"})

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            content_type = dict(scope["headers"]).get(b"content-type", b"")
            if content_type.split(b";")[0].strip().lower() in self.FORM_TYPES:
                return await _reject(
                    scope, receive, send, 415, "send JSON with 'Content-Type: application/json'"
                )
        return await self.app(scope, receive, send)


class BearerAuth:
    """ASGI middleware: everything but the probes and /metrics needs ``Authorization: Bearer <key>``."""

    OPEN_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/metrics"})

    def __init__(self, app: Any, api_key: SecretStr) -> None:
        self.app = app
        self._key = api_key.get_secret_value().encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in self.OPEN_PATHS:
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._key):
                return await _reject(
                    scope,
                    receive,
                    send,
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer <LLMOPS_API_KEY>'",
                    {"WWW-Authenticate": "Bearer"},
                )
        return await self.app(scope, receive, send)


@bentoml.service(
    traffic={"timeout": SETTINGS.timeout_s},
    resources={"cpu": "1", "memory": "1Gi"},
    workers=1,
)
class Classifier:
    """Predicts the class of tabular records with the registered model (champion by default)."""

    def __init__(self) -> None:
        from llmops.classifier import load_model
        from llmops.data import TableSchema
        from llmops.inference_log import InferenceLogger

        if SERVED is None:
            version = Registry().get(SETTINGS.model, SETTINGS.model_version or CHAMPION)
            raise RuntimeError(
                f"{version.tag} appeared after this worker imported the service: "
                f"restart it so requests are validated against that version's schema"
            )
        self.version = SERVED
        self.schema = TableSchema.model_validate(SERVED.read_json("schema.json"))
        self.model = load_model(SERVED.path)
        self.classes = [str(c) for c in self.model.classes_]
        self.columns = list(self.schema.features)
        self.inference_log = InferenceLogger(SETTINGS.inference_log_dir, SERVED.name)
        logger.info("serving %s (%d features, classes %s)", SERVED.tag, len(self.columns), self.classes)

    def __is_ready__(self) -> bool:
        return self.inference_log.alive

    @bentoml.api(
        batchable=True,
        batch_dim=0,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def predict(self, records: Records) -> list[Prediction]:
        """Class and class probabilities per record; records of concurrent requests arrive batched."""
        import pandas as pd

        from llmops.data import normalize
        from llmops.inference_log import utc_now

        values = [tuple(record.__dict__.values()) for record in records]  # (n, features), schema order
        frame = normalize(pd.DataFrame(values, columns=self.columns), self.schema)
        proba = self.model.predict_proba(frame)  # (n, classes), columns in model.classes_ order
        best = proba.argmax(axis=1)
        name, version, now = self.version.name, self.version.version, utc_now()
        results, log_rows = [], []
        for record, row_values, probs, k in zip(records, values, proba.tolist(), best, strict=True):
            label = self.classes[k]
            results.append(
                Prediction(
                    prediction=label,
                    probabilities=dict(zip(self.classes, probs, strict=True)),
                    model=name,
                    model_version=version,
                    request_id=record._request_id,
                )
            )
            log_rows.append(
                {
                    "request_id": record._request_id,
                    "row": record._row,
                    "timestamp": now,
                    "model": name,
                    "model_version": version,
                    "features": dict(zip(self.columns, row_values, strict=True)),
                    "prediction": label,
                    "probability": probs[k],
                }
            )
        self.inference_log.log(log_rows)
        return results

    @bentoml.on_shutdown
    def close_inference_log(self) -> None:
        self.inference_log.close()


# the first middleware added is the outermost: authenticate before anything else
if SETTINGS.api_key is not None:
    Classifier.add_asgi_middleware(BearerAuth, api_key=SETTINGS.api_key)
Classifier.add_asgi_middleware(JSONOnly)
