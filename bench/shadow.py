"""What a shadow challenger costs the champion's clients: the classifier service with and without
one, in the same run.

    python bench/shadow.py                          # 10 rounds of 4 s a server, at half the capacity
    python bench/shadow.py --sample 0.5 --load 0.3 --challenger random_forest
    python bench/shadow.py --quick                  # one 0.5 s round: a smoke run

Two servers on 127.0.0.1 serve the same champion (a logistic regression, C=0.1): (a) `bentoml
serve services.classifier:Classifier` as it is, (b) the same with LLMOPS_CLASSIFIER_SHADOW=challenger,
the challenger another model of the same data (default: a logistic regression with C=10, what a
retrained champion looks like; --challenger random_forest costs several times the champion per
call), answering LLMOPS_SHADOW_SAMPLE of the requests (--sample, default 0.1, the setting's default).

1. Capacity: --saturate clients, each sending its next request when the last is answered, load (a)
   for a round; its requests/s is the capacity.
2. Overhead: requests arrive at --load x the capacity (default 0.5), on a fixed schedule whatever
   the answers (open loop, so a slow answer delays no later request's send and each latency counts
   from the scheduled send), in alternating rounds (a, b, a, b, ...), so that other work on the
   machine weighs on both alike; each server's latencies are pooled. It prints both, and
   ``shadow overhead: p50 X.XXx p99 Y.YYx`` (targets: <= 1.10x, <= 1.20x).
3. Saturation: the --saturate clients load (b) for a round, and /info says what the shadow did
   meanwhile: the requests drawn, answered, and dropped on a full queue (LLMOPS_SHADOW_QUEUE).

Without spare CPU no shadow is free: the challenger takes CPU the champion would have had. What
the service promises is that it takes only spare CPU's worth of queue (a full queue drops) and
never a place on the request path.
"""

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from llmops.server_process import bento_server

SERVICE = "services.classifier:Classifier"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.classifier_release: the two models
sys.path.insert(0, str(REPO / "bench"))  # serve_classifier: the closed-loop load and the request bodies


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=4.0, help="Seconds measured per round.")
    parser.add_argument("--rounds", type=int, default=10, help="Rounds per server, alternating.")
    parser.add_argument("--warmup", type=float, default=2.0, help="Seconds of unmeasured load on each first.")
    parser.add_argument("--load", type=float, default=0.5, help="Offered load, as a share of the capacity.")
    parser.add_argument(
        "--saturate", type=int, default=64, help="Closed-loop clients that saturate a server."
    )
    parser.add_argument("--sample", type=float, default=0.1, help="LLMOPS_SHADOW_SAMPLE of server (b).")
    parser.add_argument("--queue", type=int, default=None, help="LLMOPS_SHADOW_QUEUE (default: its default).")
    parser.add_argument(
        "--challenger",
        default="logistic_regression",
        choices=["logistic_regression", "random_forest", "gradient_boosting"],
        help="The challenger's model family (logistic_regression: C=10 against the champion's 0.1).",
    )
    parser.add_argument("--quick", action="store_true", help="One 0.5 s round, 8 clients: a smoke run.")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.warmup, args.saturate = 0.5, 1, 0.3, 8
    return args


def register_models(name: str, family: str) -> str:
    """The champion of ``name`` and, under the ``challenger`` alias, a model of ``family``;
    returns the challenger's version."""
    from llmops.registry import Registry
    from llmops.tabular.classifier import build_pipeline, candidates
    from llmops.tabular.data import infer_schema, load_table, normalize
    from tests.classifier_release import register_passing_classifier

    raw = load_table()
    schema = infer_schema(raw, "target")
    data = normalize(raw, schema)

    def fit(candidate):
        return build_pipeline(schema, candidate).fit(data[list(schema.features)], data[schema.target])

    made_up = {"policy_version": "bench", "dataset_version": "bench"}
    champion = fit(candidates(["logistic_regression"])[0])  # C=0.1
    register_passing_classifier(name, champion, schema, run_pathspec="bench/shadow/champion", **made_up)
    challenger = register_passing_classifier(
        name, fit(candidates([family])[-1]), schema, promote=False, run_pathspec="bench/shadow/challenger",
        candidate=family, **made_up,
    )  # fmt: skip
    Registry().promote(name, challenger.version, alias="challenger")
    return challenger.version


async def paced(url: str, bodies: list[dict], rate: float, seconds: float) -> tuple[list[float], int]:
    """Requests sent at ``rate`` a second for ``seconds`` on a fixed schedule (open loop): the
    latencies (s, from each request's scheduled send) of the answered ones and the error count."""
    import httpx

    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def send(n: int, due: float) -> None:
            nonlocal errors
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            try:
                ok = (await client.post("/predict", json=bodies[n % len(bodies)])).status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - due)
            else:
                errors += 1

        began = time.perf_counter()
        await asyncio.gather(*(send(n, began + n / rate) for n in range(max(1, int(rate * seconds)))))
    return latencies, errors


def percentiles(latencies: list[float]) -> tuple[float, float]:
    import numpy as np

    if not latencies:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(np.asarray(latencies) * 1000, [50, 99])
    return float(p50), float(p99)


def shadow_info(url: str) -> dict:
    import httpx

    return httpx.post(f"{url}/info", json={}, timeout=30).json()["shadow"]


def main(argv: list[str] | None = None) -> None:
    from serve_classifier import load, request_bodies

    args = parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    os.environ["BENTOML_HOME"] = str(scratch / "bentoml")  # before bentoml loads: a throwaway registry
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    name = "shadow-bench"
    try:
        challenger = register_models(name, args.challenger)
        bodies = request_bodies(name, 1)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOPS_")}
        env |= {"LLMOPS_CLASSIFIER_RELEASE": name, "LLMOPS_INFERENCE_LOG_DIR": str(scratch / "log")}
        shadowed = env | {"LLMOPS_CLASSIFIER_SHADOW": "challenger", "LLMOPS_SHADOW_SAMPLE": str(args.sample)}
        if args.queue:
            shadowed["LLMOPS_SHADOW_QUEUE"] = str(args.queue)
        with ExitStack() as stack, ThreadPoolExecutor(2) as pool:
            # both start at once: most of a start is importing, on either core
            servers = [bento_server(SERVICE, env=e, log=scratch / f"{n}.log", cwd=REPO)
                       for n, e in (("plain", env), ("shadowed", shadowed))]  # fmt: skip
            starting = [pool.submit(stack.enter_context, server) for server in servers]
            plain, shadow = (f.result().url for f in starting)
            assert shadow_info(shadow)["version"] == challenger, shadow_info(shadow)

            asyncio.run(load(plain, bodies, args.warmup, args.saturate, 10**6))
            answered, _, elapsed = asyncio.run(load(plain, bodies, args.duration, args.saturate, 10**6))
            capacity = len(answered) / elapsed
            rate = args.load * capacity
            for url in (plain, shadow):
                asyncio.run(paced(url, bodies, rate, args.warmup))
            pooled: dict[str, list[float]] = {plain: [], shadow: []}
            errors = dict.fromkeys(pooled, 0)
            for _ in range(args.rounds):
                for url in (plain, shadow):
                    latencies, failed = asyncio.run(paced(url, bodies, rate, args.duration))
                    pooled[url] += latencies
                    errors[url] += failed
            during = shadow_info(shadow)
            answered, failed, elapsed = asyncio.run(load(shadow, bodies, args.duration, args.saturate, 10**6))
            after = shadow_info(shadow)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\ncapacity (server a, {args.saturate} clients): {capacity:.0f} req/s; offered {rate:.1f} req/s "
          f"({args.load:g} of it), {args.rounds} rounds of {args.duration:g} s per server, alternating; "
          f"1 row a request; shadow sample {args.sample:g}, challenger {args.challenger}")  # fmt: skip
    print(f"{'server':<22}{'requests':>10}{'errors':>8}{'p50 ms':>10}{'p99 ms':>10}")
    (p50_a, p99_a), (p50_b, p99_b) = percentiles(pooled[plain]), percentiles(pooled[shadow])
    rows = (("without a shadow", plain, p50_a, p99_a), ("with a shadow", shadow, p50_b, p99_b))
    for label, url, p50, p99 in rows:
        print(f"{label:<22}{len(pooled[url]):>10}{errors[url]:>8}{p50:>10.1f}{p99:>10.1f}")
    print(f"shadowed during the rounds: {during['sampled']} requests drawn, {during['answered']} answered, "
          f"{during['dropped']} dropped, {during['failed']} failed")  # fmt: skip
    print(f"shadow overhead: p50 {p50_b / p50_a:.2f}x p99 {p99_b / p99_a:.2f}x (targets <= 1.10x, <= 1.20x)")
    drawn, dropped = after["sampled"] - during["sampled"], after["dropped"] - during["dropped"]
    print(f"saturating load ({args.saturate} clients, {args.duration:g} s): {len(answered)} requests "
          f"({len(answered) / elapsed:.0f} req/s against {capacity:.0f} without a shadow, {failed} errors), "
          f"{drawn} shadowed, {dropped} dropped (queue of {after['queue_cap']} jobs), "
          f"{after['answered'] - during['answered']} answered by the challenger")  # fmt: skip


if __name__ == "__main__":
    main()
