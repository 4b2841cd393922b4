"""Every script under bench/ runs to its end at a tiny size and prints its ratio line(s), so a moved
or renamed name breaks this test rather than the next benchmark run. At this size the numbers mean
nothing and no target is checked: only that each script runs, exits 0 and reports."""

import importlib.util
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# six documents (the baselines take five chunks) and three golden questions: bench/rag_quality.py's
# --docs and --golden
TINY_DOCS = {
    "volcanoes.md": "# Volcanoes\n\nA volcano erupts when molten magma rises through the crust.\n\n"
    "## Hazards\n\nPyroclastic flows are fast avalanches of hot gas and ash.\n",
    "baking.md": "# Sourdough bread\n\nSourdough bread rises with a starter of wild yeast.\n"
    "Feed the starter with flour and water every day.\n",
    "chess.md": "# Chess openings\n\nCastling early moves the king to safety.\n"
    "The Sicilian Defence answers the king's pawn opening with a pawn to c5.\n",
    "astronomy.md": "# Black holes\n\nNot even light escapes a black hole.\n",
    "gardening.md": "# Tomatoes\n\nTomato plants need six hours of direct sunlight.\n",
    "bicycles.md": "# Bicycles\n\nOil the bicycle chain every few weeks.\n",
}
TINY_GOLDEN = """questions:
  - question: What are pyroclastic flows?
    reference: Fast avalanches of hot gas and ash.
    reference_contexts: ["Pyroclastic flows are fast avalanches of hot gas and ash."]
  - question: How do I keep a sourdough starter alive?
    reference: Feed it with flour and water every day.
    reference_contexts: ["Feed the starter with flour and water every day."]
  - question: How does the Sicilian Defence answer the king's pawn?
    reference: With a pawn to c5.
    reference_contexts: ["The Sicilian Defence answers the king's pawn opening with a pawn to c5."]
"""
EVIDENTLY = importlib.util.find_spec("evidently") is not None
RATIO = r"[0-9.]+ ?x"
NUMBER = r"[0-9.]+"


def bench_args(script: str, tmp_path: Path) -> tuple[list[str], list[str]]:
    """The tiny-size arguments of ``script`` and the lines (regular expressions) it must print."""
    if script == "drift.py":
        own = rf"llmops\.tabular\.drift +{NUMBER} s"
        baseline = (
            rf"speed-up +{NUMBER} x" if EVIDENTLY else "Evidently is not installed.*baseline is skipped"
        )
        return ["--rows", "20000", "--reference-rows", "5000"], [own, baseline]
    if script == "llm_serve.py":
        args = ["--model", "tiny", "--backends", "transformers", "--concurrency", "1,2", "--duration", "1",
                "--requests", "4", "--max-tokens", "8", "--warmup", "1"]  # fmt: skip
        return args, [
            r"scaling: 32 clients / 1 client = ",
            rf"overhead: service 1 client / bare generate = {RATIO}",
        ]
    if script == "rag_candidates.py":
        return ["--quick"], [rf"candidate answering: batched / sequential = {RATIO}"]
    if script == "rag_index.py":
        return ["--quick"], [rf"ratio {RATIO} \(target >= 1\.5x\)", rf"ratio {RATIO} \(target <= 1\.3x\)"]
    if script == "rag_quality.py":
        docs = tmp_path / "docs"
        docs.mkdir()
        for name, text in TINY_DOCS.items():
            (docs / name).write_text(text)
        (tmp_path / "golden.yaml").write_text(TINY_GOLDEN)
        line = (
            rf"rag quality: hybrid hit@1 {NUMBER} hit@5 {NUMBER} answer {NUMBER} "
            rf"vs best baseline hit@1 {NUMBER} hit@5 {NUMBER} answer {NUMBER}"
        )
        return ["--docs", str(docs), "--golden", str(tmp_path / "golden.yaml")], [line]
    if script == "ui.py":
        return ["--quick"], [rf"ui start: {NUMBER} s", rf"slowest page: \S+ {NUMBER} ms median"]
    if script == "shadow.py":
        overhead = rf"shadow overhead: p50 {RATIO} p99 {RATIO}"
        return ["--quick"], [overhead, rf"saturating load .* {NUMBER} shadowed, {NUMBER} dropped"]
    if script == "serve_classifier.py":
        return ["--quick"], [rf"service / bare throughput: {RATIO} \(target >= 0\.7x\)"]
    raise AssertionError(f"bench/{script} has no smoke run in this test: add its tiny size here")


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "bench").glob("*.py")))
def test_a_bench_runs_at_a_tiny_size_and_prints_its_ratios(script, tmp_path):
    args, lines = bench_args(script, tmp_path)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        cwd=REPO, capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    print(f"bench/{script}: {cpu_s:.1f} s of CPU (the script and the servers it stopped)")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    missing = [line for line in lines if not re.search(line, result.stdout)]
    assert not missing, f"bench/{script} printed none of {missing}:\n{result.stdout[-4000:]}"
