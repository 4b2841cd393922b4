"""The RAG closed loop behind `make demo-rag-loop`, on embedded defaults:

serve the RAG champion over a copy of docs/ → in-corpus questions, then off-topic ones and a
question the corpus cannot answer yet → a document changes and a user corrects the answer
(/feedback) → the monitor (flows/monitor_rag.py) names every reason → the correction is accepted
into the golden set (llmops rag golden accept) → re-index, re-evaluate, gate, promote → the running
service follows its champion and answers the new fact, without a restart.

    python scripts/demo_rag_loop.py [--generators extractive]

It works on its own release (`rag-loop`), docs copy and golden copy under $LLMOPS_HOME/demo-rag-loop,
so neither the project's docs nor a `rag` champion are touched. It ends with one line:
    rag loop: low-confidence share X -> Y, golden N -> M, release A -> B, failed requests 0
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import httpx
from demo import REPO, banner, free_port, serve

from llmops import paths

RELEASE = "rag-loop"
LOW_SCORE = 0.3  # evals/rag.yaml monitor.low_confidence_score: a top score under it is "unsure"
# a fact no document holds until step 3 adds it (nothing in docs/ is about plants)
NEW_FACT = "The team's office ficus, a tall plant by the window, is watered every Tuesday morning."
PROBE = "How often is the office ficus plant watered?"
OFF_TOPIC = [
    f"{q} {place}?"
    for q in ("What is a good recipe for dinner in", "Which football team won the cup in",
              "How do I get a train ticket to", "What was the weather like last winter in",
              "Which museum should I visit first in", "How old is the cathedral of")
    for place in ("Lisbon", "Oslo", "Kyoto", "Lima", "Nairobi", "Denver")
]  # fmt: skip


def flow(*args: str) -> None:
    """Run a flow like a user would, its output streaming here."""
    command = [sys.executable, *args[:1], "--no-pylint", *args[1:]]
    banner("python " + " ".join(args))
    subprocess.run(command, cwd=REPO, check=True)


def ask(client: httpx.Client, questions: list[str], workers: int = 4) -> list[dict]:
    """Each question once, ``workers`` at a time; an answer that is not 200 is kept with its status."""

    def one(question: str) -> dict:
        response = client.post("/query", json={"question": question})
        body = (
            response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        )
        return {"question": question, "status": response.status_code, **body}

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, questions))


def low_share(answers: list[dict]) -> float:
    tops = [max((s["score"] for s in a.get("sources", [])), default=0.0) for a in answers]
    return sum(top < LOW_SCORE for top in tops) / max(len(tops), 1)


def golden_size(path) -> tuple[str, int]:
    from llmops.rag.evaluation import load_golden

    golden = load_golden(path)
    return golden.content_version, len(golden.questions)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--generators", default="extractive", help="evaluate_rag.py --generators (default: extractive)"
    )
    args = parser.parse_args()
    started = time.monotonic()
    work = paths.home() / "demo-rag-loop"
    docs, golden = work / "docs", work / "rag_golden.yaml"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(REPO / "docs", docs)
    shutil.copy(REPO / "evals" / "rag_golden.yaml", golden)
    shutil.rmtree(paths.golden_dir() / golden.stem, ignore_errors=True)  # decisions of an earlier run

    banner(f"1. The first release: index a copy of docs/ ({docs}), evaluate, gate, promote")
    flow("flows/build_rag_index.py", "run", "--docs", str(docs))
    flow("flows/evaluate_rag.py", "run", "--golden", str(golden), "--generators", args.generators,
         "--release-name", RELEASE)  # fmt: skip

    from llmops.registry import Registry

    first = Registry().get(RELEASE).version
    golden_before = golden_size(golden)
    port = free_port()
    failed = 0
    env = {"LLMOPS_RAG_RELEASE": RELEASE, "LLMOPS_RELOAD_POLL_S": "2"}
    with serve(port, "services.rag:Rag", env=env), httpx.Client(base_url=f"http://127.0.0.1:{port}",
                                                              timeout=120) as client:  # fmt: skip
        since = datetime.now(timezone.utc).isoformat()
        from llmops.rag.evaluation import load_golden

        in_corpus = [q.question for q in load_golden(golden).questions]
        banner(f"2. Traffic: {len(in_corpus)} in-corpus questions, {len(OFF_TOPIC)} off-topic ones, "
               f"and '{PROBE}' (not in the docs yet)")  # fmt: skip
        answers = ask(client, in_corpus + OFF_TOPIC + [PROBE] * 6)
        probes = [a for a in answers if a["question"] == PROBE]
        low_before = low_share(probes + answers[: len(in_corpus)])
        print(f"answered {len(answers)}; the probe's answer: {probes[0].get('answer', '')[:120]!r}")

        banner("3. The docs change, and users correct the probe's answer (POST /feedback)")
        with (docs / "overview.md").open("a") as handle:
            handle.write(f"\n## The office\n\n{NEW_FACT}\n")
        for answer in probes:
            correction = {"rating": -1, "correction": NEW_FACT, "comment": "the docs say so now"}
            client.post("/feedback", json={"request_id": answer["request_id"], **correction})
        for answer in answers[:12]:
            client.post("/feedback", json={"request_id": answer["request_id"], "rating": 1})
        time.sleep(2)  # the log writer's flush interval

        banner("4. The monitor reads the window and says why the release needs attention")
        flow("flows/monitor_rag.py", "run", "--release-name", RELEASE, "--since", since)

        banner("5. The correction becomes a golden item (llmops rag golden candidates / accept)")
        from llmops.rag.golden_curation import accept, golden_candidates

        report = golden_candidates(golden, RELEASE, since)
        for candidate in report.candidates:
            print(f"  {candidate.id} {candidate.kind}: {candidate.question!r} -> {candidate.reference!r}")
        corrections = [c.id for c in report.candidates if c.kind == "correction"]
        if corrections:
            accepted = accept(golden, report, corrections[:1], None)
            print(f"accepted {corrections[0]}: golden {accepted.old_version} -> {accepted.new_version}")
        golden_after = golden_size(golden)

        banner("6. Re-release: the monitor again, now allowed to re-index and re-evaluate through the gate")
        flow("flows/monitor_rag.py", "run", "--release-name", RELEASE, "--since", since, "--rerelease",
             "true", "--generators", args.generators, "--golden", str(golden))  # fmt: skip
        second = Registry().get(RELEASE).version

        banner("7. The running service follows its champion (it polls the alias every 2 s)")
        deadline = time.monotonic() + 60
        while client.post("/info", json={}).json()["version"] != second and time.monotonic() < deadline:
            time.sleep(1)
        after = ask(client, [PROBE] * len(probes) + in_corpus)  # the same mix as before
        release, answer = after[0]["versions"].get("release"), after[0]["answer"]
        print(f"served by {release}; the probe's answer: {answer[:160]!r}")
        found = "every Tuesday" in answer
        print(f"the changed document's new fact is {'in' if found else 'NOT in'} the answer")
        low_after = low_share(after)
        failed = sum(a["status"] != 200 for a in answers + after)
    banner(f"RAG loop demo done in {time.monotonic() - started:.0f} s")
    print(
        f"rag loop: low-confidence share {low_before:.2f} -> {low_after:.2f}, "
        f"golden {golden_before[1]} -> {golden_after[1]}, release {first} -> {second}, "
        f"failed requests {failed}"
    )


if __name__ == "__main__":
    main()
