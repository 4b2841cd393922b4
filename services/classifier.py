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

The request model is built at import from the served version's ``schema.json``, so BentoML
validates every request (missing, unknown or mistyped column → 400 naming it) *before*
the request joins a batch. That includes each numeric value's range: the estimator computes on
the scaled value in float64 (float32 for tree ensembles), so a finite but huge number would
overflow there; outside the served version's range it is a 400 naming the column and the range.
And should a validated record still make the model call fail, the batch is bisected: only that
record's request gets a 400 naming the record, every other request of the batch its answer.
``/predict`` itself is the batchable API, because BentoML batches only HTTP calls to a
``batchable=True`` method. /livez, /readyz and /metrics are BentoML's and stay open.

Hot reload, without a restart and without failing a request:

    curl -s -X POST localhost:3000/reload -H "Authorization: Bearer $LLMOPS_API_KEY"
    {"model": "classifier", "previous": "<v1>", "current": "<v2>", "reloaded": true, "error": null}

``POST /reload`` resolves LLMOPS_CLASSIFIER_VERSION (default: the champion alias) again. If it moved,
the new version is loaded in full off the batching thread (batches keep being served), then one
attribute holding an immutable ``Served`` (version, schema, model) is replaced. ``predict`` reads
it once per batch: a batch in flight ends on the model it began with, and each answer and
inference-log row names the version that produced it. ``reloaded`` is false when nothing moved
(always, for a pinned version). A version whose features or classes differ from the served ones
is refused with 409 and the reason: requests are validated against the schema built at import,
so it takes a restart. A ref that no longer resolves is a 404. Either way the old version keeps
serving. With LLMOPS_RELOAD_POLL_S > 0 a background thread also does this every that many
seconds. Each worker process holds its own model and ``/reload`` reaches only the worker that
takes the call, so with ``workers > 1`` rely on the poll (this service runs one worker).
"""

import asyncio
import logging
import threading
import uuid
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any

import bentoml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    create_model,
)

from llmops.registry import CHAMPION, ModelVersion, Registry, RegistryError
from llmops.serving import (
    DEFAULT_MAX_BODY_BYTES,
    BatchResults,
    protect,
    request_error,
    settings_from_env,
)

if TYPE_CHECKING:
    from llmops.tabular.data import TableSchema

logger = logging.getLogger("bentoml.service.classifier")


class Settings(BaseModel):
    """Service settings; each field is read from ``LLMOPS_<FIELD>`` (see the module docstring)."""

    classifier_release: str = "classifier"  # the registry name
    classifier_version: str | None = None  # None: whatever the champion alias points at
    api_key: SecretStr | None = None
    inference_log_dir: str | None = None  # a folder or s3://bucket/prefix
    max_batch_size: int = Field(64, gt=1)
    max_latency_ms: int = Field(1000, gt=0)  # a request queued longer than this is shed (503)
    max_records: int = Field(1000, ge=1)
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024)  # larger request bodies: 413
    timeout_s: float = Field(30.0, gt=0)
    reload_poll_s: float = Field(0.0, ge=0)  # 0: reload only on POST /reload

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        return settings_from_env(cls, env)


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


# column -> (low, high): what the served version's estimator can take; set when a version loads
LIMITS: dict[str, tuple[float, float]] = {}
LIMITS_DTYPE = ["float64"]


def _within_limits(column: str, value: float | None) -> float | None:
    """Runs per numeric value at validation, before batching (see ``classifier.input_limits``)."""
    low, high = LIMITS.get(column, (-float("inf"), float("inf")))
    if value is not None and not low <= value <= high:
        raise ValueError(
            f"{value!r} is outside what the served model can score: {column!r} must lie within "
            f"[{low:.6g}, {high:.6g}] (the model computes in {LIMITS_DTYPE[0]})"
        )
    return value


def _resolve(settings: Settings) -> tuple[ModelVersion | None, type[RecordBase]]:
    """The version to serve and a request model built from its schema (permissive if none)."""
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
            Annotated[float | None, AfterValidator(partial(_within_limits, column))]
            if kind == "numeric"
            else str | None,
            Field(alias=column, title=column, strict=True, allow_inf_nan=False)
            if kind == "numeric"
            else Field(alias=column, title=column),
        )
        for i, (column, kind) in enumerate(schema.features.items())
    }
    return version, create_model("Record", __base__=RecordBase, **fields)


class Reload(BaseModel):
    """The answer of ``POST /reload``."""

    model: str
    previous: str  # the version served when the reload began
    current: str  # the version served now
    reloaded: bool  # whether the served version changed
    error: str | None = None  # why not, on a 404 or 409; the previous version keeps serving


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


def _serve_limits(served: Served) -> None:
    """Validate the next requests against ``served``'s ranges (one dict swap, like ``served``)."""
    global LIMITS
    LIMITS_DTYPE[0] = served.dtype
    LIMITS = served.limits


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


@bentoml.service(
    traffic={"timeout": SETTINGS.timeout_s},
    resources={"cpu": "1", "memory": "1Gi"},
    workers=1,
)
class Classifier:
    """Predicts the class of tabular records with the registered model (champion by default)."""

    def __init__(self) -> None:
        from llmops.inference_log import InferenceLogger

        if SERVED is None:
            version = Registry().get(SETTINGS.classifier_release, SETTINGS.classifier_version or CHAMPION)
            raise RuntimeError(
                f"{version.tag} appeared after this worker imported the service: "
                f"restart it so requests are validated against that version's schema"
            )
        self.served = _load(SERVED)  # replaced, never mutated: see _reload
        _serve_limits(self.served)
        self.inference_log = InferenceLogger(SETTINGS.inference_log_dir, SERVED.name)
        self._reload_lock = threading.Lock()
        self._refused: dict[str, str] = {}  # version -> why; versions are immutable, so it stays refused
        self._stop_polling = threading.Event()
        self._poller: threading.Thread | None = None
        if SETTINGS.reload_poll_s > 0:
            self._poller = threading.Thread(
                target=self._poll, args=(SETTINGS.reload_poll_s,), name="reload-poll", daemon=True
            )
            self._poller.start()
        logger.info(
            "serving %s (%d features, classes %s; reload poll %s)",
            SERVED.tag,
            len(self.served.schema.features),
            list(self.served.classes),
            f"every {SETTINGS.reload_poll_s:g} s" if self._poller else "off",
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
        import pandas as pd

        from llmops.inference_log import utc_now
        from llmops.tabular.classifier import predict_proba_rows
        from llmops.tabular.data import normalize

        served = self.served  # read once: a reload during this batch must not mix two versions
        columns = list(served.schema.features)  # the Record's field order (a reload keeps the schema)
        values = [tuple(record.__dict__.values()) for record in records]  # (n, features), schema order
        frame = normalize(pd.DataFrame(values, columns=columns), served.schema)
        # (n, classes), columns in served.classes order; a row the model cannot score fails alone
        proba, failures = predict_proba_rows(served.model, frame)
        failed: dict[str, Exception] = {}  # request id -> its 400
        for i, why in failures.items():
            record = records[i]
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
        best = proba.argmax(axis=1)
        name, version, now = served.version.name, served.version.version, utc_now()
        results, log_rows = BatchResults(), []
        for record, row_values, probs, k in zip(records, values, proba.tolist(), best, strict=True):
            if record._request_id in failed:  # the whole request is answered 400, nothing logged
                results.append(failed[record._request_id])
                continue
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
                }
            )
        self.inference_log.log(log_rows)
        return results

    @bentoml.api(route="/reload")
    async def reload(self, ctx: bentoml.Context) -> Reload:
        """Serve the version the alias points at now, if it moved and has the same schema."""
        # not BentoML's thread for sync APIs (one): the batches of /predict need it while we load
        status, answer = await asyncio.to_thread(self._reload)
        ctx.response.status_code = status
        return answer

    def _reload(self) -> tuple[HTTPStatus, Reload]:
        with self._reload_lock:  # /reload and the poll: one load at a time
            old = self.served
            answer = partial(Reload, model=old.version.name, previous=old.version.version)
            try:
                version = Registry().get(SETTINGS.classifier_release, SETTINGS.classifier_version or CHAMPION)
            except RegistryError as exc:
                return HTTPStatus.NOT_FOUND, answer(
                    current=old.version.version, reloaded=False, error=str(exc)
                )
            if version.version == old.version.version:
                return HTTPStatus.OK, answer(current=old.version.version, reloaded=False)
            if version.version not in self._refused:
                new = _load(version)  # completely, before any batch can see it
                if problem := _schema_change(old, new):
                    self._refused[version.version] = problem
                    logger.warning("not reloaded, still serving %s: %s", old.version.tag, problem)
                else:
                    self.served = new  # one reference store: the swap is atomic
                    _serve_limits(new)
                    logger.info("reloaded: serving %s (was %s)", version.tag, old.version.tag)
                    return HTTPStatus.OK, answer(current=version.version, reloaded=True)
            error = self._refused[version.version]
            return HTTPStatus.CONFLICT, answer(current=old.version.version, reloaded=False, error=error)

    def _poll(self, every_s: float) -> None:
        """Background thread of each worker: reload whenever the alias moved."""
        last_problem = None
        while not self._stop_polling.wait(every_s):
            problem = None
            try:
                status, answer = self._reload()
                if status == HTTPStatus.NOT_FOUND:
                    problem = answer.error
            except Exception as exc:  # e.g. an unloadable version: keep serving and polling
                problem = f"reload failed, still serving {self.served.version.tag}: {exc!r}"
            if problem and problem != last_problem:  # log a lasting problem once, not every poll
                logger.warning(problem)
            last_problem = problem

    @bentoml.on_shutdown
    def shut_down(self) -> None:
        self._stop_polling.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
        self.inference_log.close()


def _document(doc: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document states each numeric column's range (see ``_within_limits``) and
    /reload's 404 and 409, which answer the same body as its 200."""
    reload = doc.get("paths", {}).get("/reload", {}).get("post", {}).get("responses", {})
    if "200" in reload:
        reload["404"] = {**reload["200"], "description": "The reference no longer resolves"}
        reload["409"] = {**reload["200"], "description": "Another schema: restart to serve it"}
    record = doc.get("components", {}).get("schemas", {}).get("Record", {})
    for column, (low, high) in LIMITS.items():
        for branch in record.get("properties", {}).get(column, {}).get("anyOf", []):
            if branch.get("type") == "number":
                branch.update(minimum=low, maximum=high)
    return doc


protect(Classifier, SETTINGS.api_key, max_body_bytes=SETTINGS.max_body_bytes, openapi=_document)
