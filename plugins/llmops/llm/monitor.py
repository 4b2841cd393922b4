"""The live LLM monitor: a window of an LLM release's inference log, its measures and the verdict.

``flows/monitor_llm.py`` reads a window of ``llm_request`` and ``feedback`` rows
(:mod:`llmops.request_log`) and judges it against the ``monitor:`` section of the LLM policy
(:class:`llmops.live_measures.MonitorRules`):

    prompt_drift        MMD² permutation test of the prompts' user text against the fine-tune
                        dataset's held-out questions; the flow measures it (the test and the
                        embedder belong to the RAG pipeline, which this package does not import)
    negative_feedback   share of negative ratings, only past ``min_ratings`` ratings
    latency_p99_ms      p99 of ``latency_ms.total`` (p50 beside it)
    ttft_p99_ms         p99 of ``latency_ms.first_token``, the time to the first token
    error_rate          share of requests answered with a status >= 500
    length_cut          share of answers cut by the length limit (``finish_reason == "length"``)

:func:`decide` turns them into an :class:`LlmVerdict`: ``retrain`` when a measure a new fine-tune
can fix failed (drift, feedback, cut answers), ``investigate`` when only the serving failed
(latency, errors), ``none`` otherwise; a window under ``min_requests`` is "not enough traffic".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmops.live_measures import (
    Measure,
    MonitorRules,
    Rating,
    Verdict,
    judged,
    measure_feedback,
    measure_latency,
    measure_p99,
    not_applied,
)
from llmops.live_measures import decide as decide_verdict

RETRAINABLE = frozenset({"prompt_drift", "negative_feedback", "length_cut"})
DEFAULT_DATASET = "datasets/llmops_instructions.jsonl"


class LlmRequest(BaseModel):
    """An ``llm_request`` row as the monitor reads it (other fields are ignored)."""

    model_config = ConfigDict(extra="ignore")

    request_id: str
    timestamp: str
    route: str = "/v1/chat/completions"
    prompt: str | None = None
    prompt_chars: int | None = None
    finish_reason: str | None = None
    latency_ms: dict[str, float | None] = Field(default_factory=dict)
    status: int = 200


class LlmWindow(BaseModel):
    """Requests oldest first, the latest rating per request id, rows that could not be read."""

    requests: list[LlmRequest] = Field(default_factory=list)
    feedback: list[Rating] = Field(default_factory=list)
    unreadable: int = 0


def window_from_rows(rows: Iterable[dict[str, Any]]) -> LlmWindow:
    """Requests and the standing feedback of raw log rows; a shadow challenger's rows are not
    traffic: they are left out (:func:`llmops.request_log.champion_rows`)."""
    from llmops.request_log import FEEDBACK, LLM_REQUEST, champion_rows, latest_feedback

    rows = champion_rows(rows)
    requests, feedback, unreadable = [], [], 0
    for row in rows:
        if row.get("kind") != LLM_REQUEST:
            continue
        try:
            requests.append(LlmRequest.model_validate(row))
        except ValidationError:
            unreadable += 1  # a malformed row must not hide the rest of the window
    for row in latest_feedback(r for r in rows if r.get("kind") == FEEDBACK).values():
        try:
            feedback.append(Rating.model_validate(row))
        except ValidationError:
            unreadable += 1
    return LlmWindow(
        requests=sorted(requests, key=lambda r: r.timestamp),
        feedback=sorted(feedback, key=lambda f: f.timestamp),
        unreadable=unreadable,
    )


def read_llm_window(
    root: Path | str | None, release: str, since: datetime | str | None, until: datetime | str | None
) -> LlmWindow:
    """The champion's ``llm_request`` and ``feedback`` rows of ``<root>/<release>`` with
    ``since <= timestamp < until``."""
    from llmops.request_log import CHAMPION_ROLE, FEEDBACK, LLM_REQUEST, read_rows

    rows = read_rows(root, release, since, until, kinds={LLM_REQUEST, FEEDBACK}, roles=[CHAMPION_ROLE])
    return window_from_rows(rows)


_CHATML_USER = re.compile(r"<\|im_start\|>user\s*\n(.*?)(?:<\|im_end\|>|$)", re.S)
_SPECIAL = re.compile(r"<\|[^|>]*\|>|</?s>")


def user_text(prompt: str) -> str:
    """The last user turn of a rendered prompt (the logged prompt is the chat template's text):
    ChatML's user block, the plain ``user: ... assistant:`` layout, else the text without the
    template's special tokens."""
    if turns := _CHATML_USER.findall(prompt):
        return turns[-1].strip()
    if "user:" in prompt:
        return prompt.rsplit("user:", 1)[1].rsplit("assistant:", 1)[0].strip()
    return " ".join(_SPECIAL.sub(" ", prompt).split())


def window_prompts(window: LlmWindow) -> list[str]:
    """The user text of every logged prompt (none when ``LLMOPS_LOG_TEXT=false`` left them out)."""
    return [text for r in window.requests if r.prompt and (text := user_text(r.prompt))]


def held_out_questions(dataset: str | Path, eval_fraction: float, seed: int) -> list[str]:
    """The user turns (instruction and context, as the model is prompted) of the records a
    fine-tune on ``dataset`` holds out (the same split)."""
    from llmops.llm.sft_data import load_instructions, split_records

    _, held_out = split_records(load_instructions(dataset), eval_fraction, seed)
    return [r.user_message() for r in held_out]


def measure_length_cut(requests: Sequence[LlmRequest], rules: MonitorRules) -> Measure:
    name, limit = "length_cut", rules.max_length_share
    finished = [r for r in requests if r.status < 400 and r.finish_reason]
    if not finished:
        return not_applied(name, limit, "no answered request logged a finish reason")
    cut = sum(r.finish_reason == "length" for r in finished)
    share = cut / len(finished)
    text = f"{cut} of {len(finished)} answers cut by the length limit ({share:.0%}, max {limit:.0%})"
    return judged(name, share, limit, share > limit, text)


def measure_window(window: LlmWindow, rules: MonitorRules, drift: Measure) -> LlmVerdict:
    """Every measure of ``window`` (``drift``: the prompt-drift measure the caller took), and the
    verdict."""
    requests = window.requests
    first = [t for r in requests if (t := r.latency_ms.get("first_token")) is not None]
    latency, errors = measure_latency(requests, rules)
    measures = [
        drift,
        measure_feedback(window.feedback, rules),
        latency,
        measure_p99("ttft_p99_ms", first, rules.max_ttft_p99_ms, "time to first token"),
        errors,
        measure_length_cut(requests, rules),
    ]
    return decide(measures, len(requests), len(window.feedback), rules)


LlmVerdict = Verdict


def llm_action(failed: list[Measure]) -> str:
    """``retrain`` when a measure a new fine-tune can move failed; else ``investigate``: slow or
    failing serving is not fixed by a new fine-tune."""
    return "retrain" if any(m.name in RETRAINABLE for m in failed) else "investigate"


def decide(measures: Sequence[Measure], requests: int, ratings: int, rules: MonitorRules) -> Verdict:
    return decide_verdict(measures, requests, ratings, rules, llm_action)


def retrain_dataset(dataset: str | Path, corrections: Path | None, out: Path) -> tuple[Path, int]:
    """``dataset`` plus the accepted corrections' fine-tune records (JSONL) as one JSONL at
    ``out``; returns it and how many records the corrections added. Every record is checked
    (:func:`llmops.llm.sft_data.load_instructions`) before the fine-tune reads them."""
    from llmops.llm.sft_data import load_instructions

    records = load_instructions(dataset)
    added = load_instructions(corrections, min_records=1) if corrections and corrections.is_file() else []
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(r.model_dump_json() + "\n" for r in [*records, *added]), encoding="utf-8")
    return out, len(added)
