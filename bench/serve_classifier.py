"""Throughput and latency of the classifier service against a bare Starlette endpoint.

    python bench/serve_classifier.py                      # 15 s each, 32 clients, 1 row/request
    python bench/serve_classifier.py --duration 30 --rows-per-request 8
    python bench/serve_classifier.py --quick              # 1 s each, 4 clients: a smoke run

The servers run on 127.0.0.1, one process each, serving the same registered model:
(a) `bentoml serve services.classifier:Classifier` (validation, adaptive batching,
inference log, metrics), (b) the same service with LLMOPS_LOG_DURABLE=true (each batch's rows
written before its answers leave), and (c) a bare uvicorn + Starlette app doing only the
per-request work: parse JSON, build a DataFrame, predict_proba, return JSON; no batching. One
asyncio client with N concurrent workers hits each in turn. Without --bentoml-home the run uses a
throwaway BentoML home and trains a small model into it when there is no champion.
"""

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from llmops.server_process import bento_server, free_port, started_server

SERVICE = "services.classifier:Classifier"

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests.classifier_release: the model registered when there is none


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=15.0, help="Seconds measured per server.")
    parser.add_argument("--warmup", type=float, default=3.0, help="Seconds of unmeasured load first.")
    parser.add_argument("--concurrency", type=int, default=32, help="Concurrent clients.")
    parser.add_argument("--max-requests", type=int, default=200_000, help="Stop a run after this many.")
    parser.add_argument("--rows-per-request", type=int, default=1, help="Records in each request.")
    parser.add_argument("--model", default="classifier", help="Registry name to serve.")
    parser.add_argument(
        "--bentoml-home",
        type=Path,
        default=None,
        help="BentoML home with the model (default: a temporary one, with a model trained into it).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 s each after 0.5 s, 4 clients: checks it runs, measures little.",
    )
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.concurrency = 1.0, 0.5, 4
    return args


# ---- the model ------------------------------------------------------------------------------


def ensure_champion(name: str) -> None:
    """Train and promote a logistic regression on the bundled data if ``name`` has no champion."""
    from llmops.registry import Registry
    from tests.classifier_release import fit_classifier, register_passing_classifier

    if Registry().find(name) is not None:
        return
    model, schema = fit_classifier()
    version = register_passing_classifier(
        name,
        model,
        schema,
        run_pathspec="bench/serve_classifier",
        policy_version="bench",
        dataset_version="bench",
    )
    print(f"trained and promoted {version.tag} to champion")


def request_bodies(name: str, rows_per_request: int, count: int = 200) -> list[dict]:
    from llmops.registry import Registry
    from llmops.tabular.data import load_table

    columns = list(Registry().get(name).read_json("schema.json")["features"])
    frame = load_table()[columns]
    records = frame.to_dict("records")
    return [
        {"records": [records[(i * rows_per_request + j) % len(records)] for j in range(rows_per_request)]}
        for i in range(count)
    ]


# ---- (b) the bare endpoint --------------------------------------------------------------------


def run_bare_server(port: int, name: str) -> None:
    import pandas as pd
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from llmops.registry import Registry
    from llmops.tabular.classifier import load_model
    from llmops.tabular.data import TableSchema, normalize

    version = Registry().get(name)
    schema = TableSchema.model_validate(version.read_json("schema.json"))
    model = load_model(version.path)
    classes = [str(c) for c in model.classes_]

    async def predict(request: Request) -> JSONResponse:
        body = await request.json()
        frame = normalize(pd.DataFrame(body["records"], columns=list(schema.features)), schema)
        proba = model.predict_proba(frame)
        return JSONResponse(
            [
                {
                    "prediction": classes[row.argmax()],
                    "probabilities": dict(zip(classes, row.tolist(), strict=True)),
                    "model": version.name,
                    "model_version": version.version,
                }
                for row in proba
            ]
        )

    async def ready(_: Request) -> JSONResponse:
        return JSONResponse({})

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", ready)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ---- servers and load ---------------------------------------------------------------------------


async def load(url: str, bodies: list[dict], seconds: float, concurrency: int, max_requests: int):
    """Latencies (s) of successful requests and the error count, from `concurrency` workers."""
    import httpx

    latencies: list[float] = []
    errors = 0
    sent = 0
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker(offset: int) -> None:
            nonlocal errors, sent
            i = offset
            while time.perf_counter() < stop_at and sent < max_requests:
                sent += 1
                started_at = time.perf_counter()
                try:
                    response = await client.post("/predict", json=bodies[i % len(bodies)])
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started_at)
                else:
                    errors += 1
                i += concurrency

        began = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - began
    return latencies, errors, elapsed


def measure(label: str, url: str, bodies: list[dict], args: argparse.Namespace) -> dict:
    import numpy as np

    asyncio.run(load(url, bodies, args.warmup, args.concurrency, args.max_requests))
    latencies, errors, elapsed = asyncio.run(
        load(url, bodies, args.duration, args.concurrency, args.max_requests)
    )
    ms = np.asarray(latencies) * 1000
    return {
        "server": label,
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
    }


def same_answers(service_url: str, bare_url: str, body: dict) -> bool:
    import httpx

    service = httpx.post(f"{service_url}/predict", json=body).json()
    bare = httpx.post(f"{bare_url}/predict", json=body).json()
    return [(a["prediction"], a["probabilities"]) for a in service] == [
        (b["prediction"], b["probabilities"]) for b in bare
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.bare_server:
        return run_bare_server(args.bare_server, args.model)

    scratch = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    os.environ["BENTOML_HOME"] = str(args.bentoml_home or scratch / "bentoml")  # before bentoml loads
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    try:
        ensure_champion(args.model)
        bodies = request_bodies(args.model, args.rows_per_request)
        env = os.environ | {
            "LLMOPS_CLASSIFIER_RELEASE": args.model,
            "LLMOPS_INFERENCE_LOG_DIR": str(scratch / "log"),
        }
        env.pop("LLMOPS_API_KEY", None)
        env.pop("LLMOPS_CLASSIFIER_VERSION", None)
        bare_port = free_port()
        bare_cmd = [sys.executable, __file__, "--model", args.model, "--bare-server", str(bare_port)]
        durable_env = env | {"LLMOPS_LOG_DURABLE": "true"}
        with (
            bento_server(SERVICE, env=env, log=scratch / "service.log", cwd=REPO) as service,
            bento_server(SERVICE, env=durable_env, log=scratch / "durable.log", cwd=REPO) as durable,
            started_server(bare_cmd, bare_port, env=env, log=scratch / "bare.log", cwd=REPO) as bare,
        ):
            service_url, bare_url = service.url, bare.url
            if not same_answers(service_url, bare_url, bodies[0]):
                print("warning: the two servers disagree on the first request")
            results = [
                measure("bentoml service", service_url, bodies, args),
                measure("bare starlette", bare_url, bodies, args),
                measure("durable log", durable.url, bodies, args),
            ]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(
        f"\n{args.concurrency} clients, {args.rows_per_request} row(s)/request, "
        f"{args.duration:g} s each after {args.warmup:g} s warm-up, model {args.model}"
    )
    print(f"{'server':<18}{'requests':>10}{'errors':>8}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for r in results:
        print(
            f"{r['server']:<18}{r['requests']:>10}{r['errors']:>8}{r['rps']:>10.1f}{r['p50']:>10.1f}{r['p99']:>10.1f}"
        )
    ratio = results[0]["rps"] / results[1]["rps"] if results[1]["rps"] else float("nan")
    print(f"service / bare throughput: {ratio:.2f}x (target >= 0.7x)")
    durable = results[2]["rps"] / results[0]["rps"] if results[0]["rps"] else float("nan")
    print(f"durable log: {durable:.2f}x throughput (LLMOPS_LOG_DURABLE=true / the background writer)")


if __name__ == "__main__":
    main()
