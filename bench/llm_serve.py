"""Streaming throughput and latency of the LLM service, per backend, against bare ``generate``.

    python bench/llm_serve.py                                 # SmolLM2-135M-Instruct, 1/8/32 clients
    python bench/llm_serve.py --model tiny --duration 5       # the tiny random model: a quick check
    python bench/llm_serve.py --model /models/my-llm --backends transformers,vllm --duration 30
    python bench/llm_serve.py --threads 1                     # torch threads of server and baseline

For each backend available here (transformers always; vLLM when it is installed and CUDA is
present) the real service runs on 127.0.0.1 (`bentoml serve services.llm:LLM`, one process),
and one asyncio client with N concurrent workers sends streaming chat completions
(`"stream": true`, `stream_options.include_usage`, so the token counts are the server's own).
Per level of concurrency:

- output tokens/s: completion tokens of every finished request over the level's wall time;
- TTFT: from sending the request to the first chunk that carries content (p50, p99);
- ITL: the gaps between consecutive content chunks, all requests pooled (p50, p99);
- TPOT: (last chunk - first chunk) / (completion tokens - 1) per request (p50), per token
  whatever the chunking.

The baseline, timed in the same run while the first server is up but idle, just before its
1-client level: ``model.generate`` in this process, one request at a time, the same prompts,
sampling and max_tokens (batch 1, no server). Each level sends at least max(4, clients) requests. The last
lines are the ratios the transformers backend is held to (targets on the 2-core reference
machine: scaling >= 4x, overhead >= 0.9x, TTFT p99 at 32 clients <= 1.5 s):

    scaling: 32 clients / 1 client = N.NNx tokens/s
    overhead: service 1 client / bare generate = N.NNx tokens/s

With vLLM as well, a summary table gives both backends' tokens/s at every level (the GPU check,
scripts/gpu_check.sh). --model takes a model folder or a named base (llmops.llm.base_models:
``smollm2-135m-instruct``, the default, or ``tiny``); named bases are built locally, offline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmops.server_process import ServerError, bento_server

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("transformers", "vllm")
TARGETS = {"vllm": 10.0}  # tokens/s against transformers, on a GPU
SCALING_TARGET, OVERHEAD_TARGET, TTFT_P99_TARGET_S = 4.0, 0.9, 1.5  # transformers, 2-core machine
DEFAULT_MODEL = "smollm2-135m-instruct"
SERVED_NAME = "llm"
TEMPERATURE = 1.0  # sampled, seeded per request: a random tiny model rarely ends early
PROMPTS = [
    "Explain what a model registry keeps for every version.",
    "Write a short note on why a promotion gate compares against the champion.",
    "Describe data drift in two sentences.",
    "List the steps of a retrieval-augmented generation pipeline.",
    "What does hot reloading a served model mean?",
    "Summarise how an inference log is written.",
    "Give three reasons to version prompts.",
    "How is time to first token measured?",
]


def csv_of(kind: type, allowed: tuple[str, ...] = ()):
    """An argparse type: a comma-separated list of ``kind`` (of ``allowed`` when given, else >= 1)."""

    def parse(text: str) -> list:
        try:
            values = [kind(item.strip()) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: not a list of {kind.__name__}") from None
        bad = [v for v in values if (v not in allowed if allowed else v < 1)]
        if bad or not values:
            wanted = " or ".join(allowed) or "an integer >= 1"
            raise argparse.ArgumentTypeError(f"{text!r}: each must be {wanted}")
        return list(dict.fromkeys(values))

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="A model folder or a named base: smollm2-135m-instruct (default), tiny.",
    )
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads of the server and the baseline (default: the "
                             "service's declared cpu, 2).")  # fmt: skip
    parser.add_argument("--backends", type=csv_of(str, BACKENDS), default=list(BACKENDS),
                        help="Backends to try, comma-separated; unavailable ones are skipped.")  # fmt: skip
    parser.add_argument("--concurrency", type=csv_of(int), default=[1, 8, 32],
                        help="Concurrent streaming clients per level, comma-separated.")  # fmt: skip
    parser.add_argument("--duration", type=float, default=10.0,
                        help="Seconds each level starts requests (those in flight then finish).")  # fmt: skip
    parser.add_argument("--requests", type=int, default=1000,
                        help="At most this many requests per level, whichever comes first.")  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request.")
    parser.add_argument("--warmup", type=int, default=3, help="Unmeasured requests before the first level.")
    parser.add_argument("--timeout", type=float, default=120.0, help="Seconds a request may take.")
    parser.add_argument("--ready-timeout", type=float, default=300.0,
                        help="Seconds a server may take to load the model and answer /readyz.")  # fmt: skip
    args = parser.parse_args(argv)
    for name in ("duration", "requests", "max_tokens", "timeout", "ready_timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')}: must be > 0, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: must be >= 1, got {args.threads}")
    from llmops.llm.base_models import NAMED_BASES

    if args.model not in NAMED_BASES and not (Path(args.model) / "config.json").is_file():
        parser.error(f"--model: {args.model} is neither a named base ({', '.join(NAMED_BASES)}) "
                     "nor a model folder (no config.json)")  # fmt: skip
    return args


def resolve_model(spec: str) -> Path:
    """The folder of a named base (built once, offline) or of a given model folder."""
    from llmops.llm.base_models import NAMED_BASES, resolve_base_model

    if spec in NAMED_BASES:
        return Path(resolve_base_model(spec).path)
    return Path(spec).resolve()  # the server runs from the repository root


# ---- the server ---------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(backend: str, model: Path, max_tokens: int, log: Path, ready_s: float, threads: int | None):
    """`bentoml serve services.llm:LLM` with ``backend`` on a free port of 127.0.0.1; yields its
    base URL once /readyz answers 200, and stops the server and its workers afterwards
    (llmops.server_process: a worker whose startup failed ends the wait with the log's end)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOPS_")}
    env |= {
        "LLMOPS_LLM_MODEL": str(model),
        "LLMOPS_LLM_BACKEND": backend,
        "LLMOPS_LLM_SERVED_NAME": SERVED_NAME,
        "LLMOPS_LLM_MAX_TOKENS": str(max(512, max_tokens)),
        "BENTOML_DO_NOT_TRACK": "True",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    if threads:
        env["LLMOPS_TORCH_THREADS"] = str(threads)
    with bento_server("services.llm:LLM", env=env, log=log, ready_s=ready_s, cwd=REPO) as server:
        yield server.url


# ---- the load -----------------------------------------------------------------------------------


@dataclass
class Level:
    """What one level of concurrency measured."""

    concurrency: int
    elapsed: float = 0.0
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)  # s, one per finished request
    itl: list[float] = field(default_factory=list)  # s, every gap between content chunks
    tpot: list[float] = field(default_factory=list)  # s per token after the first, one per request
    errors: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.ttft)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed if self.elapsed else float("nan")


async def stream_one(client, body: dict) -> tuple[list[float], int]:
    """Send one streaming chat completion; the arrival times of its content chunks (seconds after
    sending) and the server's completion-token count."""
    sent = time.perf_counter()
    arrivals: list[float] = []
    usage, done = None, False
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", []):
                if (choice.get("delta") or {}).get("content"):
                    arrivals.append(time.perf_counter() - sent)
    if not done or usage is None:
        raise RuntimeError("the stream ended without " + ("[DONE]" if not done else "a usage chunk"))
    if not arrivals:
        raise RuntimeError(f"no content chunk ({usage['completion_tokens']} completion tokens)")
    return arrivals, int(usage["completion_tokens"])


async def load(url: str, concurrency: int, seconds: float, max_requests: int, args) -> Level:
    import httpx

    level = Level(concurrency)
    sent = 0
    min_requests = max(4, concurrency)  # a slow machine still gets a few requests per level
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=args.timeout) as client:

        async def worker() -> None:
            nonlocal sent
            while (time.perf_counter() < stop_at or sent < min_requests) and sent < max_requests:
                i, sent = sent, sent + 1
                body = {
                    "model": SERVED_NAME,
                    "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                    "max_tokens": args.max_tokens,
                    "temperature": TEMPERATURE,
                    "seed": i,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                try:
                    arrivals, tokens = await stream_one(client, body)
                except (httpx.HTTPError, RuntimeError, json.JSONDecodeError, KeyError) as exc:
                    level.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                level.tokens += tokens
                level.ttft.append(arrivals[0])
                level.itl.extend(b - a for a, b in itertools.pairwise(arrivals))
                if tokens > 1:
                    level.tpot.append((arrivals[-1] - arrivals[0]) / (tokens - 1))

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        level.elapsed = time.perf_counter() - began
    return level


def measure_backend(backend: str, model: Path, args, scratch: Path, before_levels=None) -> dict[int, Level]:
    """Serve ``model`` with ``backend`` and load it at every level; ``before_levels()`` runs once the
    server is up and warm (the baseline: timed next to the 1-client level, under the same load)."""
    began = time.perf_counter()
    print(f"[{backend}] starting bentoml serve services.llm:LLM ...", flush=True)
    log = scratch / f"{backend}.log"
    with serving(backend, model, args.max_tokens, log, args.ready_timeout, args.threads) as url:
        print(f"[{backend}] ready in {time.perf_counter() - began:.0f} s at {url}", flush=True)
        if args.warmup:
            warm = asyncio.run(load(url, 1, float("inf"), args.warmup, args))
            if warm.errors:
                raise ServerError(f"[{backend}] warm-up failed: {warm.errors[0]}")
        if before_levels is not None:
            before_levels()
        levels = {}
        for concurrency in args.concurrency:
            print(f"[{backend}] {concurrency} concurrent clients, {args.duration:g} s ...", flush=True)
            level = asyncio.run(load(url, concurrency, args.duration, args.requests, args))
            levels[concurrency] = level
            rate = f"{level.tokens} tokens in {level.elapsed:.1f} s = {level.tokens_per_s:,.1f} tokens/s"
            print(f"[{backend}]   {level.requests} requests, {rate}, {len(level.errors)} errors", flush=True)
            for message in dict.fromkeys(level.errors[:5]):
                print(f"[{backend}]   error: {message}", flush=True)
    return levels


# ---- the baseline --------------------------------------------------------------------------------


@dataclass
class Baseline:
    requests: int
    tokens: int
    elapsed: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed if self.elapsed else float("nan")


def bare_generate(model: Path, args) -> Baseline:
    """``model.generate`` in this process, one request after another for ``--duration`` seconds
    (at least 4 requests): the same prompts, chat template, sampling and max_tokens as the load."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    elif not torch.cuda.is_available():
        torch.set_num_threads(2)  # what the service declares (cpu: "2") and so uses by default
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def one(i: int, max_tokens: int) -> int:
        messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
        torch.manual_seed(i)
        with torch.inference_mode():
            out = lm.generate(**enc, max_new_tokens=max_tokens, do_sample=True, temperature=TEMPERATURE,
                              top_p=1.0, pad_token_id=pad)  # fmt: skip
        return int(out.shape[1] - enc["input_ids"].shape[1])

    for i in range(args.warmup):
        one(i, 8)
    tokens = requests = 0
    began = time.perf_counter()
    while requests < 4 or (time.perf_counter() - began < args.duration and requests < args.requests):
        tokens += one(requests, args.max_tokens)
        requests += 1
    return Baseline(requests, tokens, time.perf_counter() - began)


def free_gpu_memory() -> None:
    """After the baseline: the servers need the GPU memory its model held."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- the report ---------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values) * 1000, q)) if values else float("nan")


def print_tables(results: dict[str, dict[int, Level]], args) -> None:
    baseline = results.get("transformers")
    for concurrency in args.concurrency:
        print(f"\n{concurrency} concurrent streaming clients, max_tokens {args.max_tokens}, "
              f"{args.duration:g} s per level (ms for latencies)")  # fmt: skip
        print(f"{'backend':<14}{'requests':>9}{'errors':>7}{'tokens/s':>11}{'TTFT p50':>10}{'TTFT p99':>10}"
              f"{'ITL p50':>9}{'ITL p99':>9}{'TPOT p50':>10}   vs transformers")  # fmt: skip
        for backend, levels in results.items():
            r = levels[concurrency]
            if backend == "transformers":
                ratio = "baseline"
            elif baseline is None or not baseline[concurrency].tokens_per_s:
                ratio = "n/a (no baseline)"
            else:
                ratio = f"{r.tokens_per_s / baseline[concurrency].tokens_per_s:.2f}x"
                if backend in TARGETS:
                    ratio += f" (target >= {TARGETS[backend]:g}x on a GPU)"
            print(f"{backend:<14}{r.requests:>9}{len(r.errors):>7}{r.tokens_per_s:>11,.1f}"
                  f"{pct(r.ttft, 50):>10.1f}{pct(r.ttft, 99):>10.1f}"
                  f"{pct(r.itl, 50):>9.1f}{pct(r.itl, 99):>9.1f}{pct(r.tpot, 50):>10.2f}"
                  f"   {ratio}")  # fmt: skip


def print_summary(results: dict[str, dict[int, Level]], baseline: Baseline, args) -> None:
    """tokens/s of every backend at every level (vLLM vs transformers on a GPU), the targets,
    then the two ratio lines, last."""
    print(f"\ntokens/s by concurrent clients (bare generate, batch 1: {baseline.tokens_per_s:,.1f}, "
          f"{baseline.requests} requests)")  # fmt: skip
    heads = [f"{c} client" + ("s" if c > 1 else "") for c in args.concurrency]
    print(f"{'backend':<22}" + "".join(f"{head:>13}" for head in heads))
    for backend, levels in results.items():
        print(f"{backend:<22}" + "".join(f"{levels[c].tokens_per_s:>13,.1f}" for c in args.concurrency))
    if "vllm" in results and "transformers" in results:
        ratios = []
        for c in args.concurrency:
            base = results["transformers"][c].tokens_per_s
            ratios.append(f"{results['vllm'][c].tokens_per_s / base:>12.2f}x" if base else f"{'n/a':>13}")
        print(f"{'vllm / transformers':<22}" + "".join(ratios))
    served = results.get("transformers")
    if served is None:
        return
    one, many = served.get(1), served.get(32)
    if many is not None:
        print(f"\nTTFT p99 at 32 clients (transformers): {pct(many.ttft, 99) / 1000:.2f} s "
              f"(target <= {TTFT_P99_TARGET_S:g} s); targets: scaling >= {SCALING_TARGET:g}x, "
              f"overhead >= {OVERHEAD_TARGET:g}x")  # fmt: skip
    scaling = f"{many.tokens_per_s / one.tokens_per_s:.2f}x" if one and many and one.tokens_per_s else "n/a"
    overhead = f"{one.tokens_per_s / baseline.tokens_per_s:.2f}x" if one and baseline.tokens else "n/a"
    print(f"scaling: 32 clients / 1 client = {scaling} tokens/s")
    print(f"overhead: service 1 client / bare generate = {overhead} tokens/s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from llmops.llm.vllm_backend import vllm_available

    backends = list(args.backends)
    if "vllm" in backends and not vllm_available():
        print("vllm: skipped (needs the [gpu] extra and a CUDA GPU on this machine)")
        backends.remove("vllm")
    if not backends:
        print("no backend to measure", file=sys.stderr)
        return 2

    scratch = Path(tempfile.mkdtemp(prefix="bench-llm-"))
    results: dict[str, dict[int, Level]] = {}
    try:
        model = resolve_model(args.model)
        print(f"model: {args.model} ({model})", flush=True)
        measured: list[Baseline] = []

        def measure_baseline() -> None:  # the idle server takes memory, not CPU
            measured.append(bare_generate(model, args))
            free_gpu_memory()
            b = measured[0]
            print(f"[baseline] bare generate: {b.requests} requests, {b.tokens} tokens in {b.elapsed:.1f} s "
                  f"= {b.tokens_per_s:,.1f} tokens/s", flush=True)  # fmt: skip

        for backend in backends:
            first = backend == backends[0]
            results[backend] = measure_backend(
                backend, model, args, scratch, measure_baseline if first else None
            )
        baseline = measured[0]
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print_tables(results, args)
    print_summary(results, baseline, args)
    failed = sum(len(level.errors) for levels in results.values() for level in levels.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
