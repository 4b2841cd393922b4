"""The closed loop behind `make demo-loop`:

train → serve → shifted traffic (with labels fed back) → monitor detects drift → retrain on
the champion's data plus the labelled traffic → gate → promote → the service reloads and
answers with the new version, without a restart.

    python scripts/demo_loop.py [--skip-train] [--rows 300] [--factor 1.5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import datetime, timezone

import httpx
from demo import REPO, banner, free_port, serve, train

from llmops import paths

# "a recalibrated scanner": size and texture measurements read higher than in training
SHIFTED = [
    f"{kind} {what}"
    for kind in ("mean", "worst")
    for what in (
        "radius",
        "texture",
        "perimeter",
        "area",
        "smoothness",
        "compactness",
        "concavity",
        "concave points",
        "symmetry",
        "fractal dimension",
    )
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--skip-train", action="store_true", help="start from the current champion")
    parser.add_argument(
        "--rows",
        type=int,
        default=300,
        help="records of shifted traffic to send (at most the 569 bundled rows)",
    )
    parser.add_argument("--factor", type=float, default=1.5, help="how much the shifted columns grow")
    args = parser.parse_args()

    from llmops.tabular.data import load_table
    from llmops.tabular.simulate import send, shift

    started = time.monotonic()
    if not args.skip_train:
        train()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serve(port):
        since = datetime.now(timezone.utc).isoformat()
        traffic = shift(load_table().sample(min(args.rows, 569), random_state=3), SHIFTED, args.factor)
        banner(f"Sending {len(traffic)} shifted records ({len(SHIFTED)} columns x {args.factor})")
        answers = send(url, traffic, "target")
        before = answers["model_version"].iloc[0]
        accuracy = (answers["prediction"] == answers["target"]).mean()
        print(f"served by {before}; accuracy on shifted traffic: {accuracy:.3f}")
        feedback = paths.home() / "feedback.csv"
        feedback.parent.mkdir(parents=True, exist_ok=True)
        answers[["request_id", "row", "target"]].to_csv(feedback, index=False)
        time.sleep(2)  # let the service's log writer flush

        banner(f"Monitoring: python flows/monitor_drift.py run --feedback {feedback}")
        subprocess.run(
            [
                sys.executable,
                "flows/monitor_drift.py",
                "--no-pylint",
                "run",
                "--since",
                since,
                "--feedback",
                str(feedback),
            ],
            cwd=REPO,
            check=True,
        )

        banner("Hot reload: POST /reload")
        print(httpx.post(f"{url}/reload", json={}, timeout=60).text)
        after = send(url, traffic.head(20), "target")
        accuracy = (after["prediction"] == after["target"]).mean()
        print(
            f"now served by {after['model_version'].iloc[0]} (was {before}); "
            f"accuracy on shifted traffic: {accuracy:.3f}"
        )
    banner(f"Loop demo done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
