"""Rebuild the shipped instruction dataset: grounded question answering about this project.

    python scripts/build_sft_data.py            # docs/ + evals/rag_golden.yaml -> datasets/...jsonl
    python scripts/build_sft_data.py --check    # fail if the shipped file is not what the builder makes

Each record is a question, the retrieved context from docs/ (numbered chunks with their files) in
``input``, and an answer that uses that context and cites its file (see
llmops.rag.grounded_data.build_grounded_records). The same docs and golden set always give the same file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from llmops.rag.grounded_data import build_grounded_records, write_jsonl

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", default=str(REPO / "docs"))
    parser.add_argument("--golden", default=str(REPO / "evals" / "rag_golden.yaml"))
    parser.add_argument("--out", default=str(REPO / "datasets" / "llmops_instructions.jsonl"))
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args()
    records = build_grounded_records(args.docs, args.golden)
    if args.check:
        with tempfile.TemporaryDirectory() as scratch:
            fresh = Path(scratch) / "fresh.jsonl"
            write_jsonl(records, fresh)
            if fresh.read_bytes() != Path(args.out).read_bytes():
                print(f"{args.out} is out of date: run python scripts/build_sft_data.py", file=sys.stderr)
                return 1
        print(f"{args.out} is up to date ({len(records)} records)")
        return 0
    write_jsonl(records, args.out)
    print(f"Wrote {len(records)} records to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
