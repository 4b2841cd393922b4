"""Serve the registered tabular classifier over HTTP with adaptive batching.

    LLMOPS_CLASSIFIER_RELEASE=classifier \\
        bentoml serve services.classifier:Classifier --host 127.0.0.1 --port 3000
    curl -s localhost:3000/predict -H 'Content-Type: application/json' \\
        -d '{"records": [{"mean radius": 14.1, "mean texture": 19.3, ...}]}'

Environment (every setting: docs/settings.md): LLMOPS_CLASSIFIER_RELEASE (registry name),
LLMOPS_CLASSIFIER_VERSION (a version or alias; default the champion), LLMOPS_API_KEY (optional
bearer key for /predict and /reload), LLMOPS_INFERENCE_LOG_DIR, LLMOPS_MAX_BATCH_SIZE, LLMOPS_MAX_LATENCY_MS,
LLMOPS_MAX_RECORDS (per request), LLMOPS_MAX_BODY_BYTES (larger bodies: 413), LLMOPS_TIMEOUT_S,
LLMOPS_RELOAD_POLL_S (0: off).

The request model is built at import from the ``schema.json`` of the version the ref names then,
so BentoML validates every request (missing, unknown or mistyped column → 400 naming it) *before*
the request joins a batch. Each numeric value's range is checked in the batch, against the
served version: the estimator computes on the scaled value in float64 (float32 for tree
ensembles), so a finite but huge number would overflow there; outside the served version's range
it is a 400 for that request alone, naming the column and the range. And should a validated
record still make the model call fail, the batch is bisected: only that record's request gets a
400 naming the record, every other request of the batch its answer.
``/predict`` itself is the batchable API, because BentoML batches only HTTP calls to a
``batchable=True`` method. /livez, /readyz and /metrics are BentoML's and stay open.

Hot reload, without a restart and without failing a request (llmops.release_follower, as in
every service; docs/serving.md):

    curl -s -X POST localhost:3000/reload -H "Authorization: Bearer $LLMOPS_API_KEY"
    {"model": "classifier", "previous": "<v1>", "current": "<v2>", "reloaded": true, "error": null}

Each batch reads the served release once (version, schema, model, value ranges) and uses only
that: each answer and inference-log row names the version that produced it, and a value outside
that version's ranges is a 400 for its request alone. The request model is the schema the service
started with (BentoML fixes an API's input type when the class is defined), so a version whose
features or classes differ is refused with 409 and the reason: serving it takes a restart.

A shadow challenger (llmops.shadow; docs/serving.md): with LLMOPS_CLASSIFIER_SHADOW=<version or
alias> (e.g. ``challenger``), that version also scores a sample of the requests (LLMOPS_SHADOW_SAMPLE,
default 0.1), on a worker thread once the batch is answered, and its predictions are logged beside
the champion's with ``role: "shadow"``, the same request_id and row. It may use fewer features than
the requests carry, not others. The client only ever gets the champion's prediction.
"""

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import bentoml
import pydantic
from bentoml.exceptions import ServiceUnavailable
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, create_model

from llmops.inference_log import CHAMPION_ROLE
from llmops.registry import CHAMPION, ModelVersion, Registry, RegistryError
from llmops.release_follower import ReleaseFollower, Reload, document_reload, reload_route
from llmops.release_follower import Served as ReleaseServed
from llmops.request_log import elapsed_ms
from llmops.serving import DEFAULT_MAX_BODY_BYTES, BatchResults, protect, request_error, settings_from_env
from llmops.shadow import Shadow
from llmops.supervision import die_with_supervisor
from llmops.tracing import annotate, handed_context, span
from llmops.tracing import setup as setup_tracing

if TYPE_CHECKING:
    from llmops.tabular.data import TableSchema

die_with_supervisor()  # a worker ends with the bentoml serve process that started it
setup_tracing()  # before BentoML builds its request span's middleware (llmops.tracing)
logger = logging.getLogger("bentoml.service.classifier")


class Settings(BaseModel):
    """Service settings; each field is read from ``LLMOPS_<FIELD>`` (see the module docstring)."""

    classifier_release: str = "classifier"  # the registry name
    classifier_version: str | None = None  # None: whatever the champion alias points at
    api_key: SecretStr | None = None
    inference_log_dir: str | None = None  # a folder or s3://bucket/prefix
    max_records: int = Field(1000, ge=1)
    # records, at least max_records: BentoML splits a larger request into batches run one after another
    # against its one latency budget, and sheds what is left of it when that runs out
    max_batch_size: int = Field(1000, gt=1)
    max_latency_ms: int = Field(1000, gt=0)  # a request queued longer than this is shed (503, Retry-After)
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024)  # larger request bodies: 413
    timeout_s: float = Field(30.0, gt=0)
    reload_poll_s: float = Field(0.0, ge=0)  # 0: reload only on POST /reload
    classifier_shadow: str | None = None  # a version or alias that also scores a sample (llmops.shadow)

    @pydantic.field_validator("max_batch_size")
    @classmethod
    def _holds_the_largest_request(cls, value: int, info: pydantic.ValidationInfo) -> int:
        if value < info.data.get("max_records", 0):  # absent when max_records itself is invalid
            raise ValueError(f"must be at least LLMOPS_MAX_RECORDS ({info.data['max_records']})")
        return value

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        return settings_from_env(cls, env)


class RecordBase(BaseModel):
    """One input row. Fields are added per schema; ``_request_id``/``_row`` tag it for the log."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
    _request_id: str = PrivateAttr("")
    _row: int = PrivateAttr(0)
    _trace: Any = PrivateAttr(None)  # the request's trace context (llmops.tracing), for its batch


class AnyRecord(RecordBase):
    """The request model when no version can be resolved at import (``bentoml build``)."""

    model_config = ConfigDict(extra="allow")


class Prediction(BaseModel):
    prediction: str
    probabilities: dict[str, float]  # class -> probability, summing to 1
    model: str
    model_version: str
    request_id: str  # shared by the records of one request; the key into the inference log


def _request_model(settings: Settings) -> tuple["TableSchema | None", type[RecordBase]]:
    """The schema of the version the ref names now, and a request model built from it (permissive
    if none). BentoML fixes an API's input type when the class is defined: this is the one
    registry lookup at import, and a later version with another schema takes a restart."""
    from llmops.tabular.data import TableSchema

    try:
        version = Registry().get(settings.classifier_release, settings.classifier_version or CHAMPION)
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
    return schema, create_model("Record", __base__=RecordBase, **fields)


@dataclass(frozen=True)
class Served:
    """One loaded version. Swapped as a whole, so a batch never mixes two versions."""

    version: ModelVersion
    schema: "TableSchema"
    model: Any  # a fitted scikit-learn pipeline
    classes: tuple[str, ...]  # model.classes_, the column order of predict_proba
    # numeric column -> the range its estimator can take (none: no range check), and its dtype
    limits: dict[str, tuple[float, float]] = field(default_factory=dict)
    dtype: str = "float64"


def _load(version: ModelVersion) -> Served:
    from llmops.tabular.classifier import input_limits, load_model
    from llmops.tabular.data import TableSchema

    model = load_model(version.path)
    schema = TableSchema.model_validate(version.read_json("schema.json"))
    dtype, limits = input_limits(model, schema)
    return Served(version, schema, model, tuple(str(c) for c in model.classes_), limits, dtype)


def _schema_change(old: Served, new: Served) -> str | None:
    """Why ``new`` cannot replace ``old`` without a restart; None when it can."""
    before, after = old.schema.features, new.schema.features
    changes = []
    if list(after.items()) != list(before.items()):  # exact: names, kinds and order
        diff = {
            "added": [c for c in after if c not in before],
            "removed": [c for c in before if c not in after],
            "retyped": [c for c in after if c in before and after[c] != before[c]],
        }
        found = "; ".join(f"{what} {columns}" for what, columns in diff.items() if columns)
        changes.append(f"features {found or 'reordered'}")
    if (new.schema.classes, new.classes) != (old.schema.classes, old.classes):
        changes.append(f"classes {list(old.classes)} -> {list(new.classes)}")
    if not changes:
        return None
    return (
        f"{new.version.tag} has another schema than the served {old.version.tag} "
        f"({', '.join(changes)}): requests are validated against the schema built at start, "
        f"so restart the service to serve it"
    )


def _not_a_shadow(_served: Served | None, challenger: Served) -> str | None:
    """Why a version cannot shadow this service: it takes a column the requests do not carry as it
    takes it (they are validated against the schema the service started with)."""
    served = SCHEMA.features if SCHEMA is not None else {}
    other = [c for c, kind in challenger.schema.features.items() if served.get(c) != kind]
    if not other:
        return None
    return (f"{challenger.version.tag} cannot shadow this service: the requests do not carry {other} "
            f"as it takes them (it may use fewer of the served schema's features, not others)")  # fmt: skip


class ShadowBatch(NamedTuple):
    """The sampled requests of a batch, for the shadow challenger to score again."""

    columns: list[str]  # the served schema's features, the order of each row's values
    rows: list[tuple[str, int, tuple[Any, ...]]]  # (request id, row, values)
    frame: Any  # the champion's normalized frame of the batch (the challenger's types are the same)
    positions: list[int]  # each row's position in ``frame``


def _out_of_range(served: Served, row: int, values: dict[str, Any]) -> Exception | None:
    """A 400 for the first value outside what ``served``'s estimator can take (see
    ``classifier.input_limits``), else None."""
    for column, (low, high) in served.limits.items():
        value = values.get(column)
        if value is not None and not low <= value <= high:
            return request_error(
                ("records", row, column),
                f"{value!r} is outside what the served model can score: {column!r} must lie within "
                f"[{low:.6g}, {high:.6g}] (the model computes in {served.dtype})",
            )
    return None


def _stamp_request(records: list[RecordBase]) -> list[RecordBase]:
    """Runs once per validated request, before batching: tag its rows for the inference log."""
    request_id, context = uuid.uuid4().hex, handed_context()
    for row, record in enumerate(records):
        record._request_id, record._row, record._trace = request_id, row, context
    annotate(request_id=request_id, records=len(records))  # the request's span (BentoML's)
    return records


SETTINGS = Settings.from_env()
SCHEMA, Record = _request_model(SETTINGS)
Records = Annotated[
    list[Record],
    Field(min_length=1, max_length=SETTINGS.max_records),
    AfterValidator(_stamp_request),
]


@bentoml.service(traffic={"timeout": SETTINGS.timeout_s}, resources={"cpu": "1", "memory": "1Gi"}, workers=1)
class Classifier:
    """Predicts the class of tabular records with the registered model (champion by default)."""

    def __init__(self) -> None:
        from llmops.inference_log import InferenceLogger

        self.follower = ReleaseFollower(
            SETTINGS.classifier_release,
            SETTINGS.classifier_version,
            _load,
            poll_s=SETTINGS.reload_poll_s,
            refuse=_schema_change,
            log=logger,
        )
        served = self.follower.start().release
        if SCHEMA is None or list(served.schema.features.items()) != list(SCHEMA.features.items()):
            self.follower.close()
            raise RuntimeError(
                f"{served.version.tag} is not the schema this worker imported the service with: "
                f"restart it so requests are validated against that version's schema"
            )
        self.inference_log = InferenceLogger(SETTINGS.inference_log_dir, served.version.name)
        self.shadow = Shadow(SETTINGS.classifier_release, SETTINGS.classifier_shadow, _load,
                             self._shadow_answer, self._shadow_failed, poll_s=SETTINGS.reload_poll_s,
                             refuse=_not_a_shadow, log=logger)  # fmt: skip
        self.shadow.start()  # no challenger (an unset or unresolvable ref): no shadow, said once
        logger.info(
            "serving %s (%d features, classes %s; reload poll %s)",
            served.version.tag,
            len(served.schema.features),
            list(served.classes),
            f"every {SETTINGS.reload_poll_s:g} s" if SETTINGS.reload_poll_s > 0 else "off",
        )

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
        served = self.follower.served.release  # read once: a reload during this batch must not mix two
        # a batch serves several requests: a child of the first one's trace, linked to the others'
        requests = list({id(r._trace): r._trace for r in records}.values())
        with span("predict", parent=requests[0], links=requests[1:], release=served.version.name,
                  alias=SETTINGS.classifier_version or CHAMPION, release_version=served.version.version,
                  records=len(records)):  # fmt: skip
            return self._predict(served, records)

    def _predict(self, served: Served, records: list[RecordBase]) -> list[Prediction]:
        import numpy as np
        import pandas as pd

        from llmops.inference_log import utc_now
        from llmops.tabular.classifier import predict_proba_rows
        from llmops.tabular.data import normalize

        columns = list(served.schema.features)  # the Record's field order (a reload keeps the schema)
        values = [tuple(record.__dict__.values()) for record in records]  # (n, features), schema order
        failed: dict[str, Exception] = {}  # request id -> its 400
        for record, row_values in zip(records, values, strict=True):
            if record._request_id not in failed:
                problem = _out_of_range(served, record._row, dict(zip(columns, row_values, strict=True)))
                if problem is not None:
                    failed[record._request_id] = problem
        scored = [i for i, record in enumerate(records) if record._request_id not in failed]
        frame = normalize(pd.DataFrame([values[i] for i in scored], columns=columns), served.schema)
        # (scored, classes), columns in served.classes order; a row the model cannot score fails alone
        proba, failures = (
            predict_proba_rows(served.model, frame) if scored else (np.empty((0, len(served.classes))), {})
        )
        for i, why in failures.items():
            record = records[scored[i]]
            if record._request_id not in failed:
                logger.warning(
                    "request %s: record %d could not be scored by %s: %s",
                    record._request_id,
                    record._row,
                    served.version.tag,
                    why,
                )
                failed[record._request_id] = request_error(
                    ("records", record._row), f"the model could not score this record: {why}"
                )
        answers = dict(
            zip(scored, zip(proba.tolist(), proba.argmax(axis=1).tolist(), strict=True), strict=True)
        )
        name, version, now = served.version.name, served.version.version, utc_now()
        results, log_rows = BatchResults(), []
        for i, (record, row_values) in enumerate(zip(records, values, strict=True)):
            if record._request_id in failed:  # the whole request is answered 400, nothing logged
                results.append(failed[record._request_id])
                continue
            probs, k = answers[i]
            label = served.classes[k]
            results.append(
                Prediction(
                    prediction=label,
                    probabilities=dict(zip(served.classes, probs, strict=True)),
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
                    "features": dict(zip(columns, row_values, strict=True)),
                    "prediction": label,
                    "probability": probs[k],
                    "role": CHAMPION_ROLE,
                }
            )
        with span("log", records=len(log_rows)):
            self.inference_log.log(log_rows)
        self._offer_shadow(columns, records, values, failed, frame, scored)
        return results

    def _offer_shadow(self, columns: list[str], records: list[RecordBase], values: list[tuple[Any, ...]],
                      failed: dict[str, Exception], frame: Any, scored: list[int]) -> None:  # fmt: skip
        """Hand the batch's sampled requests (a draw per answered request) to the shadow challenger
        as one job: a queue put, never a wait. The job holds the champion's normalized frame (no
        copy), so the challenger does not normalize the same values again."""
        if self.shadow.challenger is None:  # no shadow: not even a draw
            return
        position = {i: n for n, i in enumerate(scored)}
        drawn: dict[str, bool] = {}
        rows, positions = [], []
        for i, (record, row_values) in enumerate(zip(records, values, strict=True)):
            if record._request_id in failed:
                continue
            if record._request_id not in drawn:
                drawn[record._request_id] = self.shadow.wants()
            if drawn[record._request_id]:
                rows.append((record._request_id, record._row, row_values))
                positions.append(position[i])
        if rows:
            self.shadow.submit(ShadowBatch(columns, rows, frame, positions), requests=sum(drawn.values()))

    def _shadow_answer(self, served: "ReleaseServed[Served]", batch: ShadowBatch) -> None:
        """The challenger scores a batch's sampled requests on a shadow worker thread (their
        clients have the champion's answers) and logs a row per record (``role: "shadow"``, the
        same request id and row; no features: they are in the champion's row)."""
        import numpy as np

        from llmops.tabular.classifier import predict_proba_rows

        started, challenger = time.perf_counter(), served.release
        why: dict[int, str] = {}  # record -> why the challenger could not score it
        for i, (_, row, row_values) in enumerate(batch.rows):
            if problem := _out_of_range(challenger, row, dict(zip(batch.columns, row_values, strict=True))):
                why[i] = problem.errors()[0]["msg"]
        scored = [i for i in range(len(batch.rows)) if i not in why]
        frame = batch.frame.iloc[[batch.positions[i] for i in scored]][list(challenger.schema.features)]
        proba, failures = (predict_proba_rows(challenger.model, frame) if scored
                           else (np.empty((0, len(challenger.classes))), {}))  # fmt: skip
        for i, reason in failures.items():
            why[scored[i]] = f"the model could not score this record: {reason}"
        answers = dict(zip(scored, proba.tolist(), strict=True))
        latency = elapsed_ms(started)
        self.inference_log.log([
            _shadow_row(served, request_id, row, {"total": latency}, probs=answers.get(i), error=why.get(i))
            for i, (request_id, row, _) in enumerate(batch.rows)
        ])  # fmt: skip

    def _shadow_failed(self, served: "ReleaseServed[Served]", batch: ShadowBatch, error: Exception,
                       latency_ms: float) -> None:  # fmt: skip
        """The shadow rows of a batch the challenger failed on (status 500, the error)."""
        from llmops.request_log import one_line

        self.inference_log.log([
            _shadow_row(served, request_id, row, {"total": latency_ms}, error=one_line(error), status=500)
            for request_id, row, _ in batch.rows
        ])  # fmt: skip

    @bentoml.api(route="/reload")
    async def reload(self, ctx: bentoml.Context) -> Reload:
        """Serve the version the alias points at now, if it moved and has the same schema (and the
        shadow's, LLMOPS_CLASSIFIER_SHADOW)."""
        return await reload_route(self.follower, ctx, also=self.shadow.reload)

    @bentoml.api(route="/info")
    def info(self) -> dict[str, Any]:
        """The served version and where it comes from, and the shadow challenger (null: none)."""
        version = self.follower.served.version
        return {"model": version.name, "version": version.version, "ref": self.follower.ref,
                "reload_poll_s": SETTINGS.reload_poll_s, "shadow": self.shadow.info()}  # fmt: skip

    @bentoml.on_shutdown
    def shut_down(self) -> None:
        self.shadow.close()  # first: a challenger's answer in progress still reaches the log
        self.follower.close()
        self.inference_log.close()


def _shadow_row(
    served: "ReleaseServed[Served]",
    request_id: str,
    row: int,
    latency_ms: dict[str, float],
    probs: list[float] | None = None,
    error: str | None = None,
    status: int | None = None,
) -> dict[str, Any]:
    """A challenger's row for one record: its prediction, or the error that left it unscored."""
    from llmops.inference_log import SHADOW_ROLE, utc_now

    challenger = served.release
    k = max(range(len(probs)), key=probs.__getitem__) if probs is not None else None
    return {"request_id": request_id, "row": row, "timestamp": utc_now(), "model": served.version.name,
            "model_version": served.version.version, "role": SHADOW_ROLE,
            "prediction": challenger.classes[k] if k is not None else None,
            "probability": probs[k] if k is not None else None, "latency_ms": latency_ms,
            "status": status or (200 if error is None else 400), "error": error}  # fmt: skip


def _served_limits() -> dict[str, tuple[float, float]]:
    """The value ranges of the version this worker serves now (none before it serves)."""
    try:
        return bentoml.get_current_service().follower.served.release.limits
    except Exception:  # no service instance in this process yet
        return {}


def _document(doc: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document states each numeric column's range in the served version (see
    ``_out_of_range``) and /reload's other answers."""
    doc = document_reload(doc)
    record = doc.get("components", {}).get("schemas", {}).get("Record", {})
    for column, (low, high) in _served_limits().items():
        for branch in record.get("properties", {}).get(column, {}).get("anyOf", []):
            if branch.get("type") == "number":
                branch.update(minimum=low, maximum=high)
    return doc


@dataclass
class ShedWithRetryAfter:
    """ASGI middleware: BentoML answers /predict 503 only when its dispatcher sheds a request queued past
    the latency budget, saying "an unexpected error has occurred", without Retry-After; this says what
    happened, and logs it as one WARNING line where BentoML logs an ERROR (dropped by the filter below)."""

    app: Any
    BODY = b'{"error": "the service is over its batching latency budget: retry"}'
    HEADERS = ((b"content-length", str(len(BODY)).encode()), (b"retry-after", b"1"))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict":
            return await self.app(scope, receive, send)
        shed = False

        async def send_shed(message: dict[str, Any]) -> None:
            nonlocal shed
            if message["type"] == "http.response.start" and message["status"] == 503:
                shed, headers = True, message.get("headers", [])
                request_id = dict(headers).get(b"x-bentoml-request-id", b"-").decode()
                logger.warning(
                    "shed /predict (request %s): queued past LLMOPS_MAX_LATENCY_MS; 503", request_id
                )
                kept = [(k, v) for k, v in headers if k.lower() != b"content-length"]
                await send({**message, "headers": [*kept, *self.HEADERS]})
                await send({"type": "http.response.body", "body": self.BODY})
            elif not shed:  # BentoML's own body of a shed request is dropped
                await send(message)

        await self.app(scope, receive, send_shed)


protect(Classifier, SETTINGS.api_key, max_body_bytes=SETTINGS.max_body_bytes, openapi=_document)
Classifier.add_asgi_middleware(ShedWithRetryAfter)
logging.getLogger("bentoml._internal.server.http_app").addFilter(  # where BentoML logs a failed request
    lambda record: not (record.exc_info and isinstance(record.exc_info[1], ServiceUnavailable))
)
