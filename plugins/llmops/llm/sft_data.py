"""Instruction datasets for fine-tuning: JSON Lines of ``{"instruction", "input"?, "response"}``.

    records = load_instructions("datasets/llmops_instructions.jsonl")
    train, held_out = split_records(records, eval_fraction=0.2, seed=0)

Every line is checked; a file with bad lines fails once, listing each bad line by number and
field (``line 7: response: Field required``), so a user fixes them all in one go. The version is
a hash of the normalised records (``sft-…``): the same examples give the same version whatever
the key order or whitespace of the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmops.errors import LlmopsError, field_problems

MAX_REPORTED = 20  # bad lines named in one error


class DatasetError(LlmopsError, ValueError):
    """A dataset file that cannot be used; names the file, the line and the field."""


class InstructionRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    instruction: str = Field(min_length=1)
    input: str = ""  # optional context for the instruction
    response: str = Field(min_length=1)

    def user_message(self) -> str:
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction


def load_instructions(path: str | Path, *, min_records: int = 4) -> list[InstructionRecord]:
    """The records of a JSONL file; raises :class:`DatasetError` naming every bad line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"--dataset: file not found: {path}")
    records: list[InstructionRecord] = []
    problems: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"line {number}: not valid JSON ({exc.msg})")
                continue
            if not isinstance(raw, dict):
                problems.append(f"line {number}: expected a JSON object, got {type(raw).__name__}")
                continue
            try:
                records.append(InstructionRecord.model_validate(raw))
            except ValidationError as exc:
                problems.append(f"line {number}: {field_problems(exc)}")
    if problems:
        shown = problems[:MAX_REPORTED]
        more = f"\n  … and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise DatasetError(f"{path}: {len(problems)} bad line(s):\n  " + "\n  ".join(shown) + more)
    if len(records) < min_records:
        raise DatasetError(f"{path}: {len(records)} record(s); at least {min_records} are needed")
    return records


def dataset_version(records: list[InstructionRecord]) -> str:
    """``sft-`` + a hash of the records in file order (key order and spacing don't matter)."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record.model_dump(), sort_keys=True).encode())
        digest.update(b"\n")
    return "sft-" + digest.hexdigest()[:12]


def split_records(
    records: list[InstructionRecord], eval_fraction: float, seed: int
) -> tuple[list[InstructionRecord], list[InstructionRecord]]:
    """(train, held out), in file order. A record is held out when a hash of the seed and its
    content falls under ``eval_fraction``, so it keeps its side when the dataset grows: the next
    version's held-out examples are never the champion's training examples. At least one record
    ends on each side."""
    if not 0 < eval_fraction < 1:
        raise DatasetError(f"eval_fraction: must be between 0 and 1, got {eval_fraction}")

    def draw(record: InstructionRecord) -> float:  # uniform in [0, 1), fixed per (seed, record)
        body = f"{seed}\n" + json.dumps(record.model_dump(), sort_keys=True)
        return int(hashlib.sha256(body.encode()).hexdigest()[:12], 16) / 16**12

    draws = [draw(r) for r in records]
    held = {i for i, d in enumerate(draws) if d < eval_fraction}
    if not held:
        held = {min(range(len(records)), key=draws.__getitem__)}
    if len(held) == len(records):
        held.discard(max(range(len(records)), key=draws.__getitem__))
    return [r for i, r in enumerate(records) if i not in held], [
        r for i, r in enumerate(records) if i in held
    ]
