"""Start time and page load times of `llmops ui` over a full registry.

    python bench/ui.py                       # 200 versions, 1,000 gate decisions, 40 monitor runs
    python bench/ui.py --quick               # 8 versions, 24 decisions, 4 monitor runs: a smoke run
    python bench/ui.py --keep /tmp/ui-bench  # keep the filled homes, and print how to browse them

Fills a throwaway BentoML home (the registry: versions of 4 names with lineage, gate decision and
aliases), and a throwaway Metaflow datastore with gated runs and monitor runs. The runs are written
through Metaflow's own datastore and metadata classes (the files a flow run writes, read back by
the ordinary Metaflow client), not run as flows: 1,000 flow runs would take most of an hour. Then
starts `llmops ui` as a user would, measures how long until it answers, and loads each page: the
first load after start (cold: the Metaflow client and its caches are empty) and the median of
--repeat loads. Target: every page under 500 ms.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
TARGET_MS = 500.0
NAMES = ("classifier", "rag", "llm", "churn")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--versions", type=int, default=200, help="Registered versions (over 4 names).")
    parser.add_argument("--decisions", type=int, default=1000, help="Gated runs, a quarter of them failed.")
    parser.add_argument("--monitor-runs", type=int, default=40, help="Monitor runs of the classifier.")
    parser.add_argument("--repeat", type=int, default=5, help="Loads of each page after the first.")
    parser.add_argument("--keep", type=Path, help="Fill this folder and keep it (default: a temporary one).")
    parser.add_argument(
        "--quick", action="store_true", help="A small fill, each page loaded twice: checks it runs."
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.versions, args.decisions, args.monitor_runs, args.repeat = 8, 24, 4, 1
    return args


def decision(name: str, i: int, passed: bool, champion: str | None) -> dict:
    """A gate decision as @gate records it: every rule with its value and limit."""
    f1 = 0.93 + (i % 7) / 100 if passed else 0.71
    rules = [
        {
            "rule": "metrics.f1.min",
            "value": f1,
            "limit": 0.9,
            "passed": f1 >= 0.9,
            "detail": "",
            "applied": True,
        },
        {
            "rule": "regression.f1",
            "value": 0.001,
            "limit": 0.02,
            "passed": True,
            "detail": f"champion {champion}: 0.9400 -> candidate {f1:.4f}",
            "applied": True,
        },
        {
            "rule": "fairness.recall.gap",
            "value": None,
            "limit": 0.1,
            "passed": True,
            "detail": "no group column given: fairness not measured",
            "applied": False,
        },
    ]
    return {
        "model": name,
        "passed": passed,
        "rules": rules,
        "policy_version": "policy-bench00000",
        "champion_version": champion,
    }


def fill_registry(versions: int) -> dict[str, list[str]]:
    from llmops.registry import Registry

    registry, made = Registry(), {name: [] for name in NAMES}
    for i in range(versions):
        name = NAMES[i % len(NAMES)]
        meta = {
            "run": f"TrainClassifierFlow/{1000 + i}",
            "dataset_version": f"ds-{i:012x}",
            "metrics": {"accuracy": 0.95, "f1": 0.94 + (i % 5) / 100},
            "gate_passed": True,
            "policy_version": "policy-bench00000",
            "code_version": "git:bench",
        }
        if name == "rag":
            meta |= {
                "index_version": f"idx-{i:012x}",
                "prompt": "rag_answer@prompt-bench",
                "generator": "extractive",
            }
        found = registry.register(
            name,
            lambda folder: (folder / "model.txt").write_text("bench"),
            metadata=meta,
            labels={"stage": "gated"},
            json_files={"gate_decision.json": decision(name, i, True, None)},
        )
        made[name].append(found.version)
    for name, ids in made.items():
        for version in ids[-3:-1]:
            registry.promote(name, version)  # two promotions: rollback has somewhere to go
        registry.promote(name, ids[-1], alias="challenger")
    return made


def _writer(flow_name: str, root: str):
    from metaflow.datastore import FlowDataStore
    from metaflow.metaflow_environment import MetaflowEnvironment
    from metaflow.plugins.datastores.local_storage import LocalStorage
    from metaflow.plugins.metadata_providers.local import LocalMetadataProvider

    flow = SimpleNamespace(name=flow_name)
    environment = MetaflowEnvironment(flow)
    metadata = LocalMetadataProvider(environment, flow, None, None)
    return metadata, FlowDataStore(
        flow_name, environment, metadata, None, None, storage_impl=LocalStorage, ds_root=root
    )


def write_run(writer, steps: list[tuple[str, dict]], tags: list[str]) -> str:
    """One finished run: each step one task with these artifacts, as a flow run leaves them."""
    from metaflow.metadata_provider import MetaDatum

    metadata, store = writer
    run_id = metadata.new_run_id(tags=tags)
    for step, artifacts in steps:
        task_id = metadata.new_task_id(run_id, step)
        task = store.get_task_datastore(run_id, step, task_id, attempt=0, mode="w")
        task.init_task()
        task.save_artifacts(list({**artifacts, "_task_ok": True, "_success": True}.items()))
        attempt = ["attempt_id:0"]
        metadata.register_metadata(
            run_id,
            step,
            task_id,
            [
                MetaDatum(field="ds-type", value="local", type="ds-type", tags=attempt),
                MetaDatum(field="ds-root", value=store.datastore_root, type="ds-root", tags=attempt),
                MetaDatum(field="attempt_ok", value="True", type="internal_attempt_status", tags=attempt),
            ],
        )
        task.done()
    return run_id


def fill_runs(root: str, decisions: int, monitor_runs: int, made: dict[str, list[str]]) -> None:
    import pandas as pd

    gated = _writer("TrainClassifierFlow", root)
    for i in range(decisions):
        name, passed = NAMES[i % len(NAMES)], i % 4 != 3
        gate = decision(name, i, passed, made[name][0] if made[name] else None)
        tags = [f"model:{name}", "gate:passed" if passed else "gate:failed"]
        write_run(
            gated,
            [
                ("start", {"registry_name": name}),
                ("evaluate", {"gate_decision": gate}),
                ("end", {"gate_decision": gate, "promoted": passed}),
            ],
            tags,
        )
    monitor = _writer("MonitorDriftFlow", root)
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    window = pd.DataFrame({"mean radius": range(200), "mean area": range(200)})
    for i in range(monitor_runs):
        drifted = i % 5 == 4
        report = {
            "columns": [
                {
                    "column": c,
                    "kind": "numeric",
                    "statistic": "ks",
                    "value": 0.001 if drifted else 0.4,
                    "threshold": 0.05,
                    "drifted": drifted,
                }
                for c in window.columns
            ],
            "drifted_share": 1.0 if drifted else 0.0,
            "dataset_drifted": drifted,
            "max_drifted_share": 0.5,
        }
        end = {
            "window_until": (start + timedelta(days=i)).isoformat(),
            "drift_report": report,
            "window": window,
            "live_scores": {"accuracy": 0.9 - 0.1 * drifted, "labelled_rows": 50.0},
            "verdict": "data drift" if drifted else "no drift, live metrics within the policy",
            "decision": {"retrain": drifted, "reasons": ["data drift"] if drifted else []},
            "retrain_outcome": "TrainClassifierFlow/1: promoted" if drifted else "not needed",
        }
        write_run(monitor, [("start", {}), ("detect", {}), ("end", end)], ["model:classifier"])


def measure(
    env: dict[str, str], workdir: Path, pages: list[str], repeat: int, log: Path
) -> tuple[float, dict]:
    """``llmops ui``'s start (process start to /healthz's first 200) and each page's load times."""
    import httpx

    from llmops.server_process import ServerError, free_port, started_server

    port, times = free_port(), {}
    command = [sys.executable, "-m", "llmops.cli", "ui", "--port", str(port)]
    started = time.perf_counter()
    try:
        with started_server(command, port, env=env, log=log, ready_s=60, cwd=workdir,
                            ready_path="/healthz", poll_s=0.02) as server:  # fmt: skip
            start_s = time.perf_counter() - started
            with httpx.Client(base_url=server.url, timeout=60) as client:
                for page in pages:
                    loads = []
                    for _ in range(repeat + 1):
                        began = time.perf_counter()
                        reply = client.get(page)
                        loads.append((time.perf_counter() - began) * 1000)
                        if reply.status_code != 200:
                            raise SystemExit(f"{page} answered {reply.status_code}; {log} ends:\n"
                                             f"{log.read_text(errors='replace')[-3000:]}")  # fmt: skip
                    times[page] = (loads[0], statistics.median(loads[1:]))
    except ServerError as exc:
        raise SystemExit(f"llmops ui did not start: {exc}") from None
    return start_s, times


def main() -> None:
    args = parse_args()
    home = args.keep or Path(tempfile.mkdtemp(prefix="llmops-ui-bench-"))
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "BENTOML_HOME": str(home / "bentoml"),
        "LLMOPS_HOME": str(home / "llmops"),
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(home),
        "METAFLOW_USER": "bench",
        "LLMOPS_API_KEY": "",
    }
    os.environ.update(env)  # this process fills the same homes
    try:
        began = time.perf_counter()
        made = fill_registry(args.versions)
        fill_runs(str(home / ".metaflow"), args.decisions, args.monitor_runs, made)
        print(
            f"filled {args.versions} versions, {args.decisions} gate decisions, {args.monitor_runs} monitor "
            f"runs in {time.perf_counter() - began:.1f} s ({home})"
        )
        from metaflow import Flow, namespace

        namespace(None)
        run = next(iter(Flow("TrainClassifierFlow"))).pathspec
        pages = [
            "/models",
            "/models/classifier",
            f"/models/classifier/{made['classifier'][-1]}",
            "/gates",
            "/gates/classifier",
            "/gates/classifier?status=failed",
            "/gates/classifier?page=5",
            f"/runs/{run}",
            "/monitoring",
            "/monitoring/classifier",
            "/golden",
            "/playground",
        ]
        start_s, times = measure(env, REPO, pages, args.repeat, home / "ui.log")
        print(f"ui start: {start_s:.2f} s (process start to the first answer; target < 3 s)")
        print(f"{'page':44} {'first ms':>9} {'median ms':>10}")
        for page, (first, median) in times.items():
            print(f"{page:44} {first:9.0f} {median:10.0f}")
        slowest = max(times, key=lambda p: times[p][1])
        verdict = "ok" if times[slowest][1] < TARGET_MS else "OVER"
        print(
            f"slowest page: {slowest} {times[slowest][1]:.0f} ms median "
            f"(target < {TARGET_MS:.0f} ms: {verdict})"
        )
        if args.keep:
            print(
                f"browse it: cd {REPO} && BENTOML_HOME={home}/bentoml "
                f"METAFLOW_DATASTORE_SYSROOT_LOCAL={home} llmops ui"
            )
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
