"""The end-to-end demo behind `make demo`, on embedded defaults:

1. classic ML: train (data → validate → version → candidates → gate → promote), serve the
   champion with BentoML on 127.0.0.1, send a few requests (and one bad one), stop the server;
2. RAG: index the project's docs/ into Chroma, evaluate on the golden set (gate), release,
   serve services.rag:Rag, ask two questions and print the answers with their sources;
3. LLM: fine-tune SmolLM2-135M-Instruct with LoRA on datasets/llmops_instructions.jsonl
   (grounded questions about this project; configs/finetune_cpu.yaml), gate it against its base
   model, release the adapter, serve it with services.llm:LLM and stream its answer to a held-out
   question through the OpenAI-compatible API, beside the reference and the base model's answer.

    python scripts/demo.py [--skip-train] [--skip-rag] [--skip-llm] [--port PORT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from llmops import paths
from llmops.server_process import ServerError, bento_server, free_port
from llmops.settings import child_environment

REPO = Path(__file__).resolve().parents[1]


def banner(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def train() -> None:
    banner("Training: python flows/train_classifier.py run")
    subprocess.run([sys.executable, "flows/train_classifier.py", "--no-pylint", "run"], cwd=REPO, check=True)


@contextlib.contextmanager
def serve(
    port: int, target: str = "services.classifier:Classifier", env: dict[str, str] | None = None
) -> Iterator[None]:
    """``bentoml serve`` on 127.0.0.1 until the block ends (its log goes to this terminal); ``env``
    adds settings to this process's environment."""
    banner(f"Serving: bentoml serve {target} --host 127.0.0.1 --port {port}")
    environment = child_environment(env)
    try:
        with bento_server(target, port=port, env=environment, cwd=REPO, ready_s=300):  # may load slowly
            yield
    except ServerError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        banner(f"Stopped {target}")


def ask(port: int) -> None:
    from llmops.tabular.data import load_table

    frame = load_table()
    sample = frame.sample(4, random_state=7)
    records = json.loads(sample.drop(columns=["target"]).to_json(orient="records"))
    banner(f"POST /predict with {len(records)} records")
    answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"records": records}, timeout=30)
    answer.raise_for_status()
    for truth, result in zip(sample["target"], answer.json(), strict=True):
        print(json.dumps(result), f"(actual: {truth})")

    banner("A bad request (a column missing) is a 400 naming the field")
    broken = dict(records[0])
    broken.pop("mean radius")
    bad = httpx.post(f"http://127.0.0.1:{port}/predict", json={"records": [broken]}, timeout=30)
    print(bad.status_code, bad.text[:400])


QUESTIONS = (
    "How does the gate compare a new model with the champion?",
    "Which drift test is used for a numeric column when the reference is small?",
)


def rag(port: int) -> None:
    for flow in ("build_rag_index.py", "evaluate_rag.py"):
        banner(f"RAG: python flows/{flow} run")
        subprocess.run([sys.executable, f"flows/{flow}", "--no-pylint", "run"], cwd=REPO, check=True)
    subprocess.run([sys.executable, "-m", "llmops.cli", "models", "show", "rag"], cwd=REPO, check=True)
    with serve(port, "services.rag:Rag"):
        for question in QUESTIONS:
            banner(f"POST /query  {question}")
            reply = httpx.post(f"http://127.0.0.1:{port}/query", json={"question": question}, timeout=60)
            reply.raise_for_status()
            body = reply.json()
            print(body["answer"])
            for source in body["sources"]:
                print(
                    f"  [{source['number']}] {source['path']}#{source['chunk']}  score {source['score']:.3f}"
                )
        print("versions:", json.dumps(body["versions"]))


def llm(port: int) -> None:
    banner(
        "LLM: python flows/finetune_llm.py --config training configs/finetune_cpu.yaml run\n"
        "     (LoRA on SmolLM2-135M-Instruct, CPU: grounded answers about this project, gated vs the base)"
    )
    run_id_file = paths.home() / "demo-finetune-run-id"
    run_id_file.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "flows/finetune_llm.py", "--no-pylint", "--config", "training",
         "configs/finetune_cpu.yaml", "run", "--run-id-file", str(run_id_file)],
        cwd=REPO, check=True,
    )  # fmt: skip
    from metaflow import Run, namespace

    namespace(None)
    run = Run(f"FinetuneLlmFlow/{run_id_file.read_text().strip()}")
    evaluate = run["evaluate"].task
    base, tuned = evaluate["base_scores"].data, evaluate["eval_scores"].data
    shown = [k for k in ("rouge_l", "faithfulness", "perplexity") if k in base]
    scores = "held out, base -> tuned: " + ", ".join(f"{k} {base[k]:.3f} -> {tuned[k]:.3f}" for k in shown)
    if not run["promote"].task["promoted"].data:
        print(f"{scores}\n{run['promote'].task['promotion_note'].data}: nothing new to serve")
        return
    subprocess.run([sys.executable, "-m", "llmops.cli", "models", "show", "llm"], cwd=REPO, check=True)
    sample = evaluate["eval_samples"].data[0]  # a held-out question: never trained on
    with serve(port, "services.llm:LLM"):
        question = sample["prompt"].rsplit("Question: ", 1)[-1]
        sources = [line.split("] ", 1)[1] for line in sample["prompt"].splitlines() if line.startswith("[")]
        banner(f"POST /v1/chat/completions (stream)  {question}\n  context: {', '.join(sources)}")
        body = {"model": "llm", "messages": [{"role": "user", "content": sample["prompt"]}], "max_tokens": 64,
                "temperature": 0, "stream": True}  # fmt: skip
        with httpx.stream(
            "POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=180
        ) as reply:
            reply.raise_for_status()
            for line in reply.iter_lines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                    print(delta or "", end="", flush=True)
        print(f"\n\nreference:  {sample['reference']}\nbase model: {sample['base_answer']}\n{scores}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--skip-train", action="store_true", help="serve the current champion as it is")
    parser.add_argument("--skip-rag", action="store_true", help="leave out the RAG part")
    parser.add_argument("--skip-llm", action="store_true", help="leave out the LLM fine-tune part")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args()
    started = time.monotonic()
    if not args.skip_train:
        train()
    subprocess.run([sys.executable, "-m", "llmops.cli", "models", "list", "classifier"], cwd=REPO, check=True)
    port = args.port or free_port()
    with serve(port):
        ask(port)
    if not args.skip_rag:
        rag(args.port or free_port())
    if not args.skip_llm:
        llm(args.port or free_port())
    banner(f"Demo done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
