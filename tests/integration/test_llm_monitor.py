"""The LLM monitor for real: a tiny model registered as an LLM release, a log written through
``InferenceLogger`` in the service's row shape (prompts far from the fine-tune dataset, negative
ratings, answers cut by the length limit); flows/monitor_llm.py judges the window and says which
fine-tune would have run. No retrain here: it would fine-tune."""

import uuid
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from metaflow import Run, namespace
from metaflow.cards import get_cards

from llmops.inference_log import InferenceLogger
from llmops.llm.tiny import build_tiny_causal_lm
from llmops.request_log import feedback_row, llm_request_row
from tests.conftest import REPO, run_flow
from tests.integration.test_train_flow import card_content

pytestmark = [pytest.mark.slow, pytest.mark.integration]
START = datetime(2026, 11, 1, tzinfo=timezone.utc)
TOPICS = ["sourdough bread", "a marathon plan", "Kyoto in autumn", "tax returns", "pasta dough"]
TEMPLATES = ["How do I start with {}?", "What does {} cost?", "Is {} hard?", "Who invented {}?",
             "Where can I learn {}?", "When is the best time for {}?", "Why do people like {}?",
             "What goes wrong with {}?"]  # fmt: skip


def register_tiny(name, folder):
    from llmops.llm.release import LlmRelease, register_llm_release

    model = build_tiny_causal_lm(folder / "tiny-gpt2")
    release = LlmRelease(base_model="tiny", base_fingerprint="test", base_source=str(model),
                         base_bundled=False, merged=True, lora={}, training={}, dataset_version="ds-test",
                         train_steps=0, device="cpu", dtype="float32")  # fmt: skip
    (folder / "adapter").mkdir()
    register_llm_release(
        name=name, release=release, adapter_dir=folder / "adapter", base_dir=None, merged_dir=model,
        scores={}, evaluation={}, run_pathspec="NoSuchFlow/1",
        gate_decision={"passed": True, "policy_version": "test", "champion_version": None, "rules": []},
    )  # fmt: skip


def write_log(log_dir, name):
    rows = []
    for i, question in enumerate(t.format(topic) for topic in TOPICS for t in TEMPLATES):
        row = llm_request_row(
            request_id=f"r{i}", model=name, model_version="v1", route="/v1/chat/completions",
            stream=False, prompt=f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n",
            answer="I cannot say.", prompt_tokens=12, completion_tokens=64,
            finish_reason="length" if i % 2 else "stop", latency_ms={"first_token": 40.0, "total": 300.0},
            keep_text=True,
        )  # fmt: skip
        rows.append(row | {"timestamp": (START + timedelta(minutes=i)).isoformat()})
    for i in range(12):
        row = feedback_row(request_id=f"r{i}", model=name, model_version="v1", rating=-1 if i < 8 else 1)
        rows.append(row | {"timestamp": (START + timedelta(minutes=i, seconds=30)).isoformat()})
    logger = InferenceLogger(log_dir, name, flush_interval=0.05)
    logger.log(rows)
    logger.close()


def monitor(tmp_path, *args):
    run_id_file = tmp_path / f"run-id-{uuid.uuid4().hex[:6]}"
    policy = yaml.safe_load((REPO / "evals/llm.yaml").read_text())
    policy["monitor"] |= {"min_questions": 10, "permutations": 200}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    result = run_flow("monitor_llm.py", *args, "--run-id-file", str(run_id_file), timeout=600,
                      top=("--config", "policy", str(tmp_path / "policy.yaml")))  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    namespace(None)
    return Run(f"MonitorLlmFlow/{run_id_file.read_text().strip()}")


def test_the_monitor_names_drift_negative_feedback_and_cut_answers_and_what_would_retrain(tmp_path):
    name = "llm-mon-" + uuid.uuid4().hex[:8]
    register_tiny(name, tmp_path)
    write_log(tmp_path / "log", name)
    common = ("--release-name", name, "--log-dir", str(tmp_path / "log"))
    run = monitor(tmp_path, *common, "--since", START.isoformat(), "--until", "2026-11-02T00:00")
    verdict = run.data.verdict
    assert (verdict["requests"], verdict["ratings"], verdict["action"]) == (40, 12, "retrain")
    failed = [reason.split(":")[0] for reason in verdict["reasons"]]
    assert failed == ["prompt_drift", "negative_feedback", "length_cut"], verdict["reasons"]
    assert "8 of 12 ratings negative" in verdict["summary"]
    assert "20 of 40 answers cut by the length limit" in verdict["summary"]
    assert run.data.retrain_outcome.startswith("retrain needed: would run flows/finetune_llm.py on ")
    assert run.data.retrain_run is None and f"model:{name}" in run.tags
    assert run.data.passing_prompts == []  # a failed window never joins the reference
    card = card_content(get_cards(run["measure"].task, type="llmops_monitor")[0])
    assert "prompt_drift" in card and "length_cut" in card and "Feedback over time" in card
    # the next run starts where this one stopped: nothing logged since, not enough traffic
    again = monitor(tmp_path, *common)
    assert again.data.window_since == run.data.window_until
    assert again.data.verdict["reasons"] == ["not enough traffic: 0 requests < min_requests 30"]
    assert again.data.verdict["action"] == "none" and again.data.retrain_outcome == "not needed"
