"""``llmops rag golden candidates|accept|reject``: the golden set grows from use (docs/rag.md).
``llmops.cli`` adds these commands; errors reach its ``main``, which prints them as one line.

llmops rag golden candidates [--release rag] [--since ISO] [--golden evals/rag_golden.yaml]
llmops rag golden accept ID... [--reference TEXT] [--golden FILE] [--release rag] [--since ISO]
llmops rag golden reject ID... [--golden FILE] [--release rag] [--since ISO]
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from llmops.rag.golden_growth import DEFAULT_MIN_CLUSTER, CandidateReport

console = Console()


def _report(args: argparse.Namespace) -> CandidateReport:
    from llmops.rag.golden_curation import golden_candidates

    return golden_candidates(
        args.golden, args.release, args.since, low_score=args.low_score, min_cluster=args.min_cluster
    )


def _counts(report: CandidateReport) -> str:
    notes = [f"corrections: {report.corrections}", f"low-confidence requests: {report.low_confidence}"]
    if report.unlogged:
        notes.append(
            f"rows without their question text: {report.unlogged} (not logged: cannot be candidates)"
        )
    if report.unmatched:
        notes.append(f"corrections of requests before the window: {report.unmatched}")
    if report.hidden:
        notes.append(f"hidden (decided before, or in the golden set): {report.hidden}")
    return "; ".join(notes)


def candidates_command(args: argparse.Namespace) -> None:
    report = _report(args)
    window = f" since {args.since}" if args.since else ""
    if not report.candidates:
        console.print(
            f"No golden candidates in {args.release!r}{window}: {_counts(report)}.",
            markup=False,
            soft_wrap=True,
        )
        return
    table = Table(title=f"Golden candidates for {args.golden} from {args.release!r}{window}")
    for column in ("id", "kind", "asked", "question", "reference", "sources"):
        table.add_column(column, no_wrap=column in ("id", "asked"), overflow="fold")  # nothing is cut
    for c in report.candidates:
        reference = c.reference if c.reference is not None else "needs --reference"
        table.add_row(c.id, c.kind, str(c.requests), c.question, reference, ", ".join(c.sources))
    console.print(table)
    console.print(_counts(report), markup=False, soft_wrap=True)


def accept_command(args: argparse.Namespace) -> None:
    from llmops.rag.golden_curation import accept

    done = accept(args.golden, _report(args), args.ids, args.reference)
    console.print(
        f"golden {done.name}: {done.old_version} -> {done.new_version} "
        f"({done.old_items} -> {done.new_items} items); the previous version is kept as {done.snapshot}",
        markup=False,
        soft_wrap=True,
    )
    if done.finetune_file is not None:
        console.print(
            f"fine-tune records: {done.finetune_records} appended to {done.finetune_file}",
            markup=False,
            soft_wrap=True,
        )


def reject_command(args: argparse.Namespace) -> None:
    from llmops.rag.golden_curation import reject

    for c in reject(args.golden, _report(args), args.ids):
        console.print(f"rejected {c.id} ({c.kind}): {c.question}", markup=False, soft_wrap=True)


def _log_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--golden",
        default="evals/rag_golden.yaml",
        metavar="FILE",
        help="golden set YAML (default: %(default)s)",
    )
    p.add_argument("--release", default="rag", help="whose inference log to read (default: %(default)s)")
    p.add_argument("--since", metavar="ISO", help="only rows from then on, e.g. 2026-01-31 (default: all)")
    p.add_argument(
        "--low-score",
        type=float,
        metavar="SCORE",
        help="a request whose top score is under SCORE counts as low-confidence too (default: only "
        "those the service flagged)",
    )
    p.add_argument(
        "--min-cluster",
        type=int,
        default=DEFAULT_MIN_CLUSTER,
        metavar="N",
        help="low-confidence questions alike that make a candidate (default: %(default)s)",
    )


def add_golden_growth_commands(commands: argparse._SubParsersAction) -> None:
    """``candidates``, ``accept`` and ``reject`` under ``llmops rag golden``."""
    p = commands.add_parser(
        "candidates",
        help="golden items the inference log suggests: corrected answers, clusters of unsure questions",
        description="A negative rating with a correction gives its question and the correction as "
        "reference; a cluster of at least --min-cluster similar low-confidence questions gives its "
        "most central question, which needs --reference when accepted. Accepted and rejected "
        "candidates, and questions already in the golden set, are not offered again.",
    )
    _log_options(p)
    p.set_defaults(func=candidates_command)
    p = commands.add_parser(
        "accept",
        help="append candidates to the golden set (a new version; the old one is kept)",
        description="Appends each item to --golden, snapshots the file it replaces under "
        "$LLMOPS_HOME/golden/<name>/<version>.yaml, and appends an accepted correction as a "
        "fine-tune record to $LLMOPS_HOME/golden/<name>/finetune_records.jsonl.",
    )
    p.add_argument("ids", nargs="+", metavar="ID", help="candidate ids (see: llmops rag golden candidates)")
    p.add_argument("--reference", metavar="TEXT", help="the reference answer (one ID): a cluster needs one")
    _log_options(p)
    p.set_defaults(func=accept_command)
    p = commands.add_parser("reject", help="remember that candidates do not belong in the golden set")
    p.add_argument("ids", nargs="+", metavar="ID", help="candidate ids (see: llmops rag golden candidates)")
    _log_options(p)
    p.set_defaults(func=reject_command)
