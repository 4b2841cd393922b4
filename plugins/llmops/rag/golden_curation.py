"""Curating the golden set from its candidates (``golden_growth``): accept or reject by id.

Everything a curation keeps lives under ``$LLMOPS_HOME/golden/<name>/`` (``name``: the golden
file's stem, e.g. ``rag_golden``), beside nothing the evaluation reads:

    <version>.yaml           the golden file as it was at each version a curation replaced or made
    decisions.jsonl          one line per accepted or rejected candidate: it is never offered again
    finetune_records.jsonl   an accepted correction as a grounded instruction record

Accepting appends the items to the golden file in its own layout (comments kept), so its content
version (``GoldenSet.content_version``, what ``flows/evaluate_rag.py`` records) changes, and the
file it replaced stays as a snapshot, like prompt versions.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import yaml
from filelock import FileLock
from pydantic import BaseModel

from llmops import paths
from llmops.errors import parse_yaml_model
from llmops.rag.evaluation import GoldenItem, GoldenSet, load_golden
from llmops.rag.golden_growth import Candidate, CandidateReport, GrowthError, find_candidates, read_rows

_ITEM = re.compile(r"^([ \t]*)- question:", re.MULTILINE)


class Decision(BaseModel):
    id: str
    decision: Literal["accepted", "rejected"]
    kind: str
    questions: list[str]
    timestamp: str
    golden_version: str  # the golden set's version after the decision


class Accepted(BaseModel):
    name: str
    old_version: str
    new_version: str
    old_items: int
    new_items: int
    snapshot: Path  # the file as it was before
    finetune_file: Path | None  # where the corrections' fine-tune records were appended
    finetune_records: int


def golden_name(golden: str | Path) -> str:
    return Path(golden).stem


def curation_dir(golden: str | Path) -> Path:
    return paths.golden_dir() / golden_name(golden)


def decisions(golden: str | Path) -> list[Decision]:
    path = curation_dir(golden) / "decisions.jsonl"
    if not path.is_file():
        return []
    return [Decision.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]


def golden_candidates(
    golden: str | Path,
    release: str = "rag",
    since: datetime | str | None = None,
    *,
    low_score: float | None = None,
    min_cluster: int = 3,
    log_root: Path | str | None = None,
) -> CandidateReport:
    """The candidates in ``release``'s log that the golden set lacks and nobody decided on."""
    current = load_golden(golden)
    made = decisions(golden)
    return find_candidates(
        read_rows(release, since, log_root),
        low_score=low_score,
        min_cluster=min_cluster,
        known_questions=[i.question for i in current.questions] + [q for d in made for q in d.questions],
        decided=[d.id for d in made],
    )


def _pick(golden: str | Path, report: CandidateReport, ids: list[str]) -> list[Candidate]:
    by_id = {c.id: c for c in report.candidates}
    before = {d.id: d.decision for d in decisions(golden)}
    for key in ids:
        if key in before:
            raise GrowthError(f"candidate {key!r} was {before[key]} already")
        if key not in by_id:
            raise GrowthError(f"unknown candidate id {key!r} (see: llmops rag golden candidates)")
    return [by_id[key] for key in dict.fromkeys(ids)]


def _item(candidate: Candidate, reference: str | None) -> GoldenItem:
    answer = reference or candidate.reference
    if answer is None:
        raise GrowthError(
            f"candidate {candidate.id!r} ({candidate.kind}) has no reference yet: "
            "give one with --reference TEXT"
        )
    best = next((c.text for c in candidate.contexts if c.text), None)
    # a correction is checked against what retrieval should find: the rated request's best chunk
    # when the log kept its text; else (and for a cluster) the reference itself, to edit into an excerpt
    context = best if candidate.kind == "correction" and best else answer
    sources = candidate.sources if candidate.kind == "correction" else []
    return GoldenItem(
        question=candidate.question, reference=answer, reference_contexts=[context], sources=sources
    )


def _yaml_items(items: list[GoldenItem], indent: str) -> str:
    def q(text: str) -> str:  # a JSON string is a YAML double-quoted scalar
        return json.dumps(text, ensure_ascii=False)

    lines = []
    for item in items:
        lines += [f"{indent}- question: {q(item.question)}", f"{indent}  reference: {q(item.reference)}"]
        lines.append(f"{indent}  reference_contexts:")
        lines += [f"{indent}    - {q(c)}" for c in item.reference_contexts]
        if item.sources:
            lines.append(f"{indent}  sources: [{', '.join(q(s) for s in item.sources)}]")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    """Replace the file in one step: a reader sees the old set or the new one, never half."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)


def _appended(path: Path, old: GoldenSet, items: list[GoldenItem]) -> GoldenSet:
    """Append ``items`` in the file's own layout; when that does not read back as exactly the old
    items plus the new ones (an unusual layout), write the whole set as plain YAML instead."""
    text = path.read_text()
    found = _ITEM.findall(text)
    indent = found[-1] if found else "  "
    appended = text + ("" if text.endswith("\n") else "\n") + _yaml_items(items, indent)
    wanted = old.model_copy(update={"questions": old.questions + items})
    try:
        if parse_yaml_model(appended, GoldenSet, str(path), GrowthError) == wanted:
            _write(path, appended)
            return wanted
    except (GrowthError, yaml.YAMLError):
        pass
    _write(path, yaml.safe_dump(wanted.model_dump(), sort_keys=False, allow_unicode=True, width=10_000))
    return wanted


def _snapshot(folder: Path, version: str, text: str) -> Path:
    path = folder / f"{version}.yaml"
    if not path.exists():
        _write(path, text)
    return path


def _record(folder: Path, decided: list[Candidate], verdict: str, version: str) -> None:
    now = datetime.now(timezone.utc).isoformat()
    lines = [
        Decision(
            id=c.id,
            decision=verdict,
            kind=c.kind,
            questions=c.questions,
            timestamp=now,
            golden_version=version,
        ).model_dump_json()
        for c in decided
    ]
    with (folder / "decisions.jsonl").open("a") as handle:
        handle.write("".join(line + "\n" for line in lines))


def finetune_record(candidate: Candidate, reference: str) -> dict[str, str]:
    """An accepted correction as a grounded instruction record (the shipped dataset's shape): the
    rated request's chunks as numbered context when the log kept their text, else the reference."""
    from llmops.llm.sft_data import InstructionRecord
    from llmops.rag.grounded_data import grounded_record

    contexts = [(c.source, c.text) for c in candidate.contexts if c.text]
    source = contexts[0][0] if contexts else (candidate.sources[0] if candidate.sources else "unknown")
    record = grounded_record(candidate.question, contexts or [(source, reference)], reference, source)
    return InstructionRecord.model_validate(record).model_dump()


def accept(
    golden: str | Path, report: CandidateReport, ids: list[str], reference: str | None = None
) -> Accepted:
    """Append the candidates ``ids`` to the golden file (``reference`` gives or replaces the
    reference of the one candidate accepted), snapshot the file it replaces, remember the
    decisions, and append a fine-tune record per accepted correction."""
    if reference is not None and len(set(ids)) != 1:
        raise GrowthError("--reference: give one candidate id with it")
    path, folder = Path(golden), curation_dir(golden)
    folder.mkdir(parents=True, exist_ok=True)
    # two curators never lose each other's items, nor append one candidate twice
    with FileLock(str(folder / ".lock"), timeout=30):
        chosen = _pick(golden, report, ids)
        items = [_item(c, reference) for c in chosen]
        old = load_golden(path)
        snapshot = _snapshot(folder, old.content_version, path.read_text())
        new = _appended(path, old, items)
        _snapshot(folder, new.content_version, path.read_text())
        _record(folder, chosen, "accepted", new.content_version)
        records = [
            finetune_record(c, item.reference)
            for c, item in zip(chosen, items, strict=True)
            if c.kind == "correction"
        ]
        finetune = folder / "finetune_records.jsonl" if records else None
        if finetune is not None:
            with finetune.open("a") as handle:
                handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return Accepted(
        name=golden_name(golden),
        old_version=old.content_version,
        new_version=new.content_version,
        old_items=len(old.questions),
        new_items=len(new.questions),
        snapshot=snapshot,
        finetune_file=finetune,
        finetune_records=len(records),
    )


def reject(golden: str | Path, report: CandidateReport, ids: list[str]) -> list[Candidate]:
    """Remember that the candidates ``ids`` do not belong in the golden set."""
    folder = curation_dir(golden)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock"), timeout=30):
        chosen = _pick(golden, report, ids)
        _record(folder, chosen, "rejected", load_golden(golden).content_version)
    return chosen
