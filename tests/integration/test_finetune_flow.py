"""The LoRA fine-tune loop run for real on the tiny local model (--base-model tiny: the default
base, SmolLM2, is exercised by test_finetune_smollm2.py): python flows/finetune_llm.py run,
a retry and a `resume` that continue from the stored checkpoint, the gate, the release in the
registry, and services/llm.py serving that release to the openai client."""

import os
import subprocess
import sys
import uuid

import openai
import pytest
import yaml
from metaflow import Run, namespace

from llmops.registry import Registry
from tests.conftest import REPO, run_flow, serve_bento

# several flow runs in one test (or fixture) on a 2-core machine
pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1200)]
FLOW = "FinetuneLlmFlow"


@pytest.fixture(scope="module")
def fast_training(tmp_path_factory):
    """The shipped training config, cut down: few steps, a checkpoint every 5, short answers."""
    config = yaml.safe_load((REPO / "configs" / "finetune.yaml").read_text())
    config["optim"] |= {"max_steps": 20, "warmup_steps": 0, "learning_rate": 0.003, "batch_size": 4}
    config |= {"save_steps": 5, "max_new_tokens": 6, "max_eval_examples": 8, "max_length": 128}
    path = tmp_path_factory.mktemp("config") / "fast.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    """The shipped policy's perplexity and regression rules; random weights cannot meet its
    answer-quality margins (ROUGE-L, faithfulness), which the SmolLM2 test gates on."""
    policy = yaml.safe_load((REPO / "evals" / "llm.yaml").read_text())
    policy["metrics"] = {"perplexity_ratio": policy["metrics"]["perplexity_ratio"]}
    path = tmp_path_factory.mktemp("policy") / "tiny.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


@pytest.fixture(scope="module")
def release_name():
    return "llm-" + uuid.uuid4().hex[:8]


@pytest.fixture
def checkpoints(tmp_path, monkeypatch):
    """A checkpoint store of this test's own (keys are content hashes: runs would share them)."""
    root = tmp_path / "checkpoints"
    monkeypatch.setenv("LLMOPS_CHECKPOINT_ROOT", str(root))
    return root


def finetune(tmp_path, training, policy, *args, top=()):
    """A run on the tiny base with these training settings and gate policy."""
    run_id_file = tmp_path / f"run-id-{uuid.uuid4().hex[:6]}"
    top = ("--config", "training", str(training), "--config", "policy", str(policy), *top)
    result = run_flow(
        "finetune_llm.py", "--run-id-file", str(run_id_file), "--base-model", "tiny", *args, top=top
    )
    run = None
    if run_id_file.exists():
        namespace(None)
        run = Run(f"{FLOW}/{run_id_file.read_text().strip()}")
    return result, run


def output(result):
    return result.stdout[-4000:] + result.stderr[-4000:]


@pytest.fixture(scope="module")
def first_release(tmp_path_factory, fast_training, tiny_policy, release_name):
    """A run whose first training attempt fails at step 7; @retry continues from checkpoint 5."""
    tmp = tmp_path_factory.mktemp("first")
    env = {"LLMOPS_CHECKPOINT_ROOT": str(tmp / "checkpoints"), "LLMOPS_FAULTS": "finetune.step.7"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        result, run = finetune(tmp, fast_training, tiny_policy, "--release-name", release_name)
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    assert result.returncode == 0, output(result)
    assert "failure injected at finetune.step.7" in result.stderr + result.stdout  # the first attempt's log
    return run, tmp / "checkpoints"


def test_a_retried_training_task_continues_from_its_checkpoint(first_release):
    run, store = first_release
    train = run["train"].task
    report = train["training_report"].data
    assert report["attempt"] == 1 and report["resumed_from_step"] == 5 and report["steps"] == 20
    assert report["device"] == "cpu" and report["dtype"] == "float32"
    assert [h["step"] for h in report["loss_history"]][-1] == 20
    key = run["start"].task["checkpoint_key"].data
    assert (store / key / "LATEST").read_text() == "20"
    assert sorted(p.name for p in (store / key).iterdir()) == ["LATEST", "checkpoint-20"]  # older dropped


def test_the_gate_passes_and_the_adapter_is_registered_with_lineage(first_release, release_name):
    run, _ = first_release
    evaluate = run["evaluate"].task
    decision = evaluate["gate_decision"].data
    scores, base = evaluate["eval_scores"].data, evaluate["base_scores"].data
    assert decision["passed"], decision
    assert scores["perplexity"] < base["perplexity"] and scores["perplexity_ratio"] <= 0.9
    assert "gate:passed" in run.tags
    version = Registry().get(release_name, run["promote"].task["release_version"].data)
    assert version.metadata["run"] == run.pathspec
    assert version.metadata["dataset_version"] == run["start"].task["dataset_version"].data
    assert version.metadata["dataset_version"].startswith("sft-") and version.metadata["base_model"] == "tiny"
    assert (version.path / "adapter" / "adapter_config.json").is_file()
    assert (version.path / "base" / "config.json").is_file()  # the small base travels with the release
    assert not (version.path / "model").exists()  # no --merge
    assert version.read_json("gate_decision.json")["passed"]
    assert version.read_json("eval.json")["base"] == base


def test_the_service_serves_the_adapter_release_to_the_openai_client(first_release, release_name, tmp_path):
    from llmops.llm.backends import TransformersBackend
    from llmops.llm.types import SamplingParams

    version = Registry().get(release_name, first_release[0]["promote"].task["release_version"].data)
    with serve_bento("services.llm:LLM", tmp_path, LLMOPS_LLM_RELEASE=release_name,
                     LLMOPS_LLM_VERSION=version.version, LLMOPS_LLM_BACKEND="transformers",
                     LLMOPS_LLM_MAX_TOKENS="16") as server:  # fmt: skip
        info = server.post("/info", json={}).json()
        assert info["release"] == info["path"] == version.tag and info["adapter"] is True
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "Which alias does a passing gate move?"}]
        reply = client.chat.completions.create(model=release_name, messages=messages, max_tokens=8,
                                               temperature=0)  # fmt: skip
    tuned = TransformersBackend(str(version.path / "base"), adapter=str(version.path / "adapter"))
    base = TransformersBackend(str(version.path / "base"))
    params = SamplingParams(max_tokens=8)
    expected = tuned.complete(tuned.render(messages), params).text
    assert reply.choices[0].message.content == expected
    assert expected != base.complete(base.render(messages), params).text  # the adapter changes answers


def test_resume_continues_training_from_the_failed_runs_checkpoint(
    tmp_path, fast_training, tiny_policy, release_name, first_release, checkpoints, monkeypatch
):
    monkeypatch.setenv("LLMOPS_FAULTS", "finetune.step.12:all")  # every attempt fails at step 12
    # `retries: 0`: the first failure fails the run (retries are what first_release shows)
    training = tmp_path / "no-retries.yaml"
    training.write_text(yaml.safe_dump(yaml.safe_load(fast_training.read_text()) | {"retries": 0}))
    failed, failed_run = finetune(
        tmp_path, training, tiny_policy, "--release-name", release_name, "--merge", "true"
    )
    assert failed.returncode != 0 and "failure injected at finetune.step.12" in output(failed)
    assert not failed_run.successful and failed_run["train"].task.current_attempt == 0
    monkeypatch.delenv("LLMOPS_FAULTS")
    run_id_file = tmp_path / "resumed-run-id"
    resumed = subprocess.run(
        [sys.executable, "flows/finetune_llm.py", "--no-pylint", "resume", "--origin-run-id", failed_run.id,
         "--run-id-file", str(run_id_file)],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=os.environ.copy(),
    )  # fmt: skip
    assert resumed.returncode == 0, output(resumed)
    run = Run(f"{FLOW}/{run_id_file.read_text().strip()}")
    report = run["train"].task["training_report"].data
    assert report["resumed_from_step"] == 10 and report["steps"] == 20 and report["attempt"] == 0
    # the champion (the first release) was scored on this run's held-out examples
    first = first_release[0]["promote"].task["release_version"].data
    evaluate = run["evaluate"].task
    assert evaluate["champion_scored"].data["version"] == first
    # one seed, one adapter: the champion (retried from step 5) and this run (resumed from step 10)
    # trained the same weights, so the gate sees no regression rather than noise
    assert evaluate["champion_scored"].data["scores"] == evaluate["eval_scores"].data
    assert evaluate["gate_decision"].data["passed"], evaluate["gate_decision"].data
    version = Registry().get(release_name)
    assert version.version == run["promote"].task["release_version"].data != first
    assert (version.path / "model" / "config.json").is_file()  # --merge registered merged weights


def test_a_failed_gate_keeps_the_champion(
    tmp_path, fast_training, tiny_policy, release_name, first_release, checkpoints
):
    champion = Registry().get(release_name).version
    policy = tmp_path / "strict.yaml"
    strict = yaml.safe_load(tiny_policy.read_text())
    strict["metrics"]["perplexity_ratio"] = {"max": 0.01}
    policy.write_text(yaml.safe_dump(strict))
    result, run = finetune(tmp_path, fast_training, policy, "--release-name", release_name)
    assert result.returncode == 0, output(result)
    decision = run["evaluate"].task["gate_decision"].data
    assert not decision["passed"]
    assert [r["rule"] for r in decision["rules"] if not r["passed"]] == ["metrics.perplexity_ratio.max"]
    assert "gate:failed" in run.tags and run["promote"].task["release_version"].data is None
    assert Registry().get(release_name).version == champion


def test_bad_dataset_lines_are_named_before_any_training(tmp_path, fast_training, tiny_policy):
    data = tmp_path / "bad.jsonl"
    good = '{"instruction": "Say hi", "response": "hi"}\n'
    data.write_text(good * 4 + '{"instruction": "no answer"}\n' + "not json\n" + good)
    result, _ = finetune(tmp_path, fast_training, tiny_policy, "--dataset", str(data))
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert (
        "2 bad line(s)" in text
        and "line 5: response: Field required" in text
        and "line 6: not valid JSON" in text
    )
    assert "Task is starting" in text and "/train/" not in text
