"""The live LLM monitor's measures and verdict (llmops.llm.monitor, llmops.live_measures) on
``llm_request`` and ``feedback`` rows written by the inference logger, as the service writes them."""

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from llmops.inference_log import InferenceLogger
from llmops.live_measures import MonitorRules, not_applied
from llmops.llm.monitor import (
    LlmWindow,
    decide,
    measure_window,
    read_llm_window,
    retrain_dataset,
    user_text,
    window_prompts,
)
from llmops.rag import monitor as rag_monitor
from llmops.request_log import feedback_row, llm_request_row

START = datetime(2026, 11, 1, tzinfo=timezone.utc)
RULES = MonitorRules(min_requests=10, min_ratings=5, min_questions=5, permutations=200)
NO_DRIFT = not_applied("prompt_drift", 0.01, "not measured here")


def request(i, *, total=120.0, first=30.0, status=200, finish="stop", keep_text=True, prompt=None):
    row = llm_request_row(
        request_id=f"r{i}", model="llm", model_version="v1", route="/v1/chat/completions", stream=False,
        prompt=prompt or f"<|im_start|>user\nWhat does step {i} do?<|im_end|>\n<|im_start|>assistant\n",
        answer="It runs.", prompt_tokens=12, completion_tokens=4, finish_reason=finish,
        latency_ms={"first_token": first, "total": total}, keep_text=keep_text, status=status,
    )  # fmt: skip
    return row | {"timestamp": (START + timedelta(minutes=i)).isoformat()}


def rating(i, value, minute=None):
    row = feedback_row(request_id=f"r{i}", model="llm", model_version="v1", rating=value)
    return row | {
        "timestamp": (START + timedelta(minutes=minute if minute is not None else i + 1)).isoformat()
    }


def logged(tmp_path, rows) -> LlmWindow:
    logger = InferenceLogger(tmp_path, "llm", flush_interval=0.05)
    logger.log(rows)
    logger.close()
    return read_llm_window(tmp_path, "llm", None, None)


def test_a_shadow_challengers_rows_are_not_traffic(tmp_path):
    shadow = [request(i, status=500) | {"role": "shadow", "model_version": "v2"} for i in range(4)]
    window = logged(tmp_path, [request(0), *shadow, rating(0, 1)])
    assert [r.request_id for r in window.requests] == ["r0"] and [f.rating for f in window.feedback] == [1]


def test_a_thin_window_is_not_enough_traffic_and_triggers_nothing(tmp_path):
    window = logged(tmp_path, [request(i, total=90_000, status=500) for i in range(3)])
    verdict = measure_window(window, RULES, NO_DRIFT)
    assert not verdict.enough_traffic and verdict.action == "none"
    assert verdict.reasons == ["not enough traffic: 3 requests < min_requests 10"]
    assert {m.status for m in verdict.measures} == {"not applied"}
    assert "p99 90000 ms" in verdict.measure("latency_p99_ms").reason  # shown, not judged


def test_negative_feedback_over_the_limit_asks_for_a_retrain(tmp_path):
    rows = [request(i) for i in range(20)]
    rows += [rating(i, -1) for i in range(4)] + [rating(i, 1) for i in range(4, 8)]
    rows += [rating(0, 1, minute=30)]  # the latest rating of a request replaces the first
    window = logged(tmp_path, rows)
    assert len(window.feedback) == 8
    verdict = measure_window(window, RULES, NO_DRIFT)
    feedback = verdict.measure("negative_feedback")
    assert (feedback.status, feedback.value) == ("failed", pytest.approx(3 / 8))
    assert verdict.action == "retrain"
    assert verdict.reasons == ["negative_feedback: 3 of 8 ratings negative (38%, max 30%)"]
    few = measure_window(logged(tmp_path / "few", [request(i) for i in range(20)] + [rating(1, -1)]), RULES,
                         NO_DRIFT)  # fmt: skip
    assert few.measure("negative_feedback").status == "not applied" and few.action == "none"


def test_latency_ttft_errors_and_cut_answers(tmp_path):
    rows = [request(i, total=100.0 + i, first=20.0) for i in range(18)]
    rows += [request(18, total=9000.0, first=4000.0, finish="length"), request(19, status=503, finish=None)]
    verdict = measure_window(logged(tmp_path, rows), RULES, NO_DRIFT)
    by_name = {m.name: m for m in verdict.measures}
    assert by_name["latency_p99_ms"].status == "failed" and by_name["latency_p99_ms"].value > 5000
    assert by_name["ttft_p99_ms"].status == "failed"
    assert by_name["error_rate"].value == pytest.approx(0.05) and by_name["error_rate"].status == "passed"
    assert by_name["length_cut"].value == pytest.approx(1 / 19) and by_name["length_cut"].status == "passed"
    assert verdict.action == "investigate"  # the serving is slow: a fine-tune would not help
    cut = [request(i, finish="length" if i % 2 else "stop") for i in range(20)]
    verdict = measure_window(logged(tmp_path / "cut", cut), RULES, NO_DRIFT)
    assert verdict.measure("length_cut").status == "failed" and verdict.action == "retrain"
    assert verdict.reasons == ["length_cut: 10 of 20 answers cut by the length limit (50%, max 20%)"]


def test_prompts_are_the_user_turn_and_are_absent_when_text_is_not_logged(tmp_path):
    assert user_text("<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n") == (
        "Hi there"
    )
    assert user_text("user: What is a gate?\nassistant:") == "What is a gate?"
    assert user_text("<s>[INST] What is a gate? [/INST]") == "[INST] What is a gate? [/INST]"
    window = logged(tmp_path, [request(i, keep_text=False) for i in range(3)])
    assert window_prompts(window) == [] and window.requests[0].prompt_chars > 0
    assert window_prompts(logged(tmp_path / "kept", [request(1)])) == ["What does step 1 do?"]


def test_drifted_prompts_fail_and_ask_for_a_retrain(tmp_path):
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(30, 8)) + np.eye(8)[0] * 6
    drifted = rng.normal(size=(25, 8)) + np.eye(8)[1] * 6
    window = logged(tmp_path, [request(i) for i in range(25)])
    prompts = window_prompts(window)
    drift = rag_monitor.measure_question_drift(reference, drifted, prompts, RULES)
    drift = drift.model_copy(update={"name": "prompt_drift"})
    verdict = measure_window(window, RULES, drift)
    assert verdict.measure("prompt_drift").status == "failed" and verdict.action == "retrain"
    assert verdict.reasons[0].startswith("prompt_drift: questions drifted: MMD² p-value")
    alike = rng.normal(size=(60, 8)) + np.eye(8)[0] * 6
    same = rag_monitor.measure_question_drift(alike[:30], alike[30:], prompts + prompts[:5], RULES)
    assert decide([same.model_copy(update={"name": "prompt_drift"})], 25, 0, RULES).action == "none"


def test_the_retrain_dataset_is_the_shipped_one_plus_the_accepted_corrections(tmp_path):
    shipped = tmp_path / "sft.jsonl"
    shipped.write_text(
        "".join(json.dumps({"instruction": f"q{i}", "response": "a"}) + "\n" for i in range(4))
    )
    corrections = tmp_path / "finetune_records.jsonl"
    merged, added = retrain_dataset(shipped, corrections, tmp_path / "out" / "merged.jsonl")
    assert added == 0 and len(merged.read_text().splitlines()) == 4
    corrections.write_text(json.dumps({"instruction": "new", "input": "ctx", "response": "fixed"}) + "\n")
    merged, added = retrain_dataset(shipped, corrections, tmp_path / "out" / "merged.jsonl")
    assert added == 1 and json.loads(merged.read_text().splitlines()[-1])["response"] == "fixed"


def test_the_rag_monitor_names_still_work_and_the_llm_policy_has_a_monitor_section():
    import yaml

    from llmops import live_measures
    from llmops.gates import policy_from_config

    assert rag_monitor.MonitorRules is live_measures.MonitorRules
    assert rag_monitor.measure_feedback is live_measures.measure_feedback
    with open(Path(__file__).resolve().parents[2] / "evals" / "llm.yaml") as handle:
        policy = policy_from_config(yaml.safe_load(handle))
    assert policy.monitor.max_ttft_p99_ms == 2000 and policy.monitor.retrain is False
