"""A challenger decided on live traffic, behind `make demo-shadow`:

train a champion → train a second version and put it in the `challenger` slot (the champion stays)
→ serve the champion with the challenger shadowing every request (LLMOPS_CLASSIFIER_SHADOW,
LLMOPS_SHADOW_SAMPLE=1) → send traffic and feed its labels back → `llmops models decide` pairs the
champion's and the shadow's rows of the same requests and runs the gate (the policy's online:
rules) → the champion moves by compare-and-set → the running service follows it.

    python scripts/demo_shadow.py [--rows 200] [--skip-train]

It works on its own release (`shadow-demo`) and inference log under $LLMOPS_HOME/demo-shadow, so a
`classifier` champion is not touched. It ends with one line:
    shadow: champion A -> B after N shadowed records (agreement X%), the service answers with B
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time

import httpx
from demo import REPO, banner, free_port, serve

from llmops import paths

RELEASE = "shadow-demo"


def run(*args: str, check: bool = True) -> int:
    """A flow or the `llmops` command, as a user would run it, its output streaming here."""
    banner(" ".join(args))
    python = [sys.executable, "-m", "llmops.cli"] if args[0] == "llmops" else [sys.executable]
    command = python + ([*args[1:]] if args[0] == "llmops" else [args[0], "--no-pylint", *args[1:]])
    return subprocess.run(command, cwd=REPO, check=check).returncode


def train(family: str) -> str:
    """A training run of ``family`` for RELEASE (its gate promotes it when it passes); its version."""
    from llmops.registry import Registry

    run("flows/train_classifier.py", "run", "--model-name", RELEASE, "--models", family)
    return Registry().get(RELEASE).version


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200, help="records sent (default: %(default)s)")
    parser.add_argument("--skip-train", action="store_true", help="reuse the champion and challenger")
    args = parser.parse_args()

    from llmops.inference_log import read_log
    from llmops.online_rules import CHALLENGER
    from llmops.registry import Registry
    from llmops.request_log import read_rows
    from llmops.tabular.data import load_table
    from llmops.tabular.simulate import send

    registry = Registry()
    if not args.skip_train:
        champion = train("logistic_regression")
        # a second version, trained on another family: its gate promotes it, and the rollback
        # keeps the first serving while the second waits in the challenger slot
        challenger = train("random_forest")
        if challenger != champion:
            run("llmops", "models", "rollback", RELEASE)
    champion = registry.get(RELEASE).version
    candidates = [v.version for v in registry.versions(RELEASE) if v.version != champion]
    if not candidates:
        raise SystemExit(f"{RELEASE} has one version: run without --skip-train")
    challenger = registry.aliases(RELEASE).get(CHALLENGER) or candidates[-1]
    run("llmops", "models", "promote", f"{RELEASE}:{challenger}", "--to", CHALLENGER)

    log_dir = paths.home() / "demo-shadow" / "log"
    shutil.rmtree(log_dir, ignore_errors=True)
    traffic = load_table().sample(args.rows, random_state=7)
    port = free_port()
    settings = {"LLMOPS_CLASSIFIER_RELEASE": RELEASE, "LLMOPS_CLASSIFIER_SHADOW": CHALLENGER,
                "LLMOPS_SHADOW_SAMPLE": "1", "LLMOPS_INFERENCE_LOG_DIR": str(log_dir),
                "LLMOPS_RELOAD_POLL_S": "2"}  # fmt: skip
    with serve(port, env=settings):
        url = f"http://127.0.0.1:{port}"
        banner(f"Traffic: {args.rows} records to {url}/predict, champion {champion}, shadow {challenger}")
        answers = send(url, traffic, "target", batch=10)
        labels = log_dir.parent / "labels.csv"  # beside the log, which the service may not have written yet
        labels.parent.mkdir(parents=True, exist_ok=True)
        # the labels come back later, as a labelling team would send them
        answers.rename(columns={"target": "label"})[["request_id", "row", "label"]].to_csv(
            labels, index=False
        )
        for _ in range(300):  # the shadow answers off the request path: wait for its rows
            shadowed = read_rows(log_dir, RELEASE, kinds=[None], roles=["shadow"])
            if len(shadowed) >= len(traffic):
                break
            time.sleep(0.1)
        print(f"logged: {len(read_log(log_dir, RELEASE))} champion rows, {len(shadowed)} shadow rows")

        status = run("llmops", "models", "decide", RELEASE, "--policy", "evals/classifier.yaml",
                     "--log-dir", str(log_dir), "--feedback", str(labels), check=False)  # fmt: skip
        if status == 2:
            raise SystemExit("llmops models decide failed: see its output above")
        after = registry.get(RELEASE).version
        served = None
        for _ in range(100):  # the service polls its alias every 2 s
            served = httpx.post(f"{url}/info", json={}, timeout=10).json().get("version")
            if served == after:
                break
            time.sleep(0.2)
    banner("Done")
    agreement = _agreement()
    print(f"shadow: champion {champion} -> {after} after {len(shadowed)} shadowed records "
          f"(agreement {agreement}), the service answers with {served}")  # fmt: skip


def _agreement() -> str:
    """The agreement the last decide run measured, from its gate decision."""
    from metaflow import Flow, namespace

    namespace(None)
    decision = Flow("DecideChallengerFlow").latest_run["start"].task["gate_decision"].data
    rule = next((r for r in decision["rules"] if r["rule"] == "online.agreement"), None)
    return "n/a" if rule is None or rule["value"] is None else f"{rule['value']:.0%}"


if __name__ == "__main__":
    main()
