"""An error the user can fix reaches them as Metaflow's headline and one message, in every flow:
a bad Config file stops the run before it starts, a bad parameter stops the first step. Each run
here fails in seconds."""

import pytest

from tests.conftest import run_flow

pytestmark = [pytest.mark.slow, pytest.mark.integration]
POLICY_FLOWS = ("train_classifier.py", "monitor_drift.py", "evaluate_rag.py", "finetune_llm.py")


def shown_as_a_headline(result, headline: str, message: str) -> None:
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-3000:]
    assert f"{headline}:" in out and message in out, out[-3000:]
    assert "Traceback" not in out and "Internal error" not in out, out[-3000:]


@pytest.mark.parametrize("flow", POLICY_FLOWS)
def test_a_policy_with_an_unknown_key_stops_the_run_before_it_starts(tmp_path, flow):
    policy = tmp_path / "policy.yaml"
    policy.write_text("model: clf\nsurprise_key: 1\n")
    result = run_flow(flow, top=("--config", "policy", str(policy)), timeout=120)
    shown_as_a_headline(result, "PolicyError", "policy: surprise_key: Extra inputs are not permitted")
    assert "Workflow starting" not in result.stdout + result.stderr


def test_bad_training_settings_stop_the_fine_tune_before_it_starts(tmp_path):
    training = tmp_path / "training.yaml"
    training.write_text("lora:\n  rank: 0\n")
    result = run_flow("finetune_llm.py", top=("--config", "training", str(training)), timeout=120)
    shown_as_a_headline(result, "TrainingConfigError", "training config: lora.")


@pytest.mark.parametrize(
    ("flow", "args", "headline", "message"),
    [
        (
            "train_classifier.py",
            ("--selection-metric", "speed"),
            "ParameterError",
            "--selection-metric: 'speed'",
        ),
        ("build_rag_index.py", ("--shards", "0"), "ParameterError", "--shards: must be at least 1, got 0"),
        ("evaluate_rag.py", ("--k", "0"), "ParameterError", "--k: must be between 1 and"),
        ("monitor_drift.py", ("--model-name", "Not A Name"), "RegistryError", "--model-name: 'Not A Name'"),
        (
            "finetune_llm.py",
            ("--release-name", "Not A Name"),
            "RegistryError",
            "--release-name: 'Not A Name'",
        ),
    ],
    ids=["train_classifier", "build_rag_index", "evaluate_rag", "monitor_drift", "finetune_llm"],
)
def test_a_bad_parameter_stops_the_first_step_with_one_message(flow, args, headline, message):
    result = run_flow(flow, *args, timeout=180)
    shown_as_a_headline(result, headline, message)
    assert "step start> failed" in result.stdout + result.stderr
