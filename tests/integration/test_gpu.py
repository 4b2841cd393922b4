"""The GPU paths: LoRA training and evaluation on CUDA (bf16 where the device supports it), the
fine-tune flow's GPU steps, and the vLLM backend. Skipped (never failed) without CUDA; the vLLM
tests also need the [gpu] extra."""

import math

import pytest

from tests.conftest import REPO, run_flow

pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from llmops.llm.tiny import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("models") / "tiny-gpt2")


@pytest.fixture(scope="module")
def records():
    from llmops.llm.sft_data import load_instructions

    return load_instructions(REPO / "datasets" / "llmops_instructions.jsonl")


def test_lora_trains_and_evaluates_on_cuda_with_bf16_where_supported(tiny_model, records, tmp_path):
    import torch

    from llmops.llm.checkpoints import CheckpointStore
    from llmops.llm.finetune import train_lora
    from llmops.llm.lm_eval import load_for_eval, score_model
    from llmops.llm.training_config import parse_training_config

    config = parse_training_config("optim: {max_steps: 30, learning_rate: 0.003}\nsave_steps: 10\n")
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    outcome = train_lora(str(tiny_model), records[:100], config, tmp_path / "a", store=store, key="k")
    assert outcome.device == "cuda"
    assert outcome.dtype == ("bfloat16" if torch.cuda.is_bf16_supported() else "float32")
    assert outcome.loss_history[-1]["loss"] < outcome.loss_history[0]["loss"]
    model, tokenizer = load_for_eval(str(tiny_model), str(outcome.adapter_dir), "cuda", outcome.dtype)
    assert next(model.parameters()).device.type == "cuda"
    scores, _ = score_model(model, tokenizer, records[100:], max_length=256, max_new_tokens=8)
    assert math.isfinite(scores["eval_loss"])
    # a second attempt continues from the stored checkpoint on the GPU too
    again = train_lora(str(tiny_model), records[:100], config, tmp_path / "b", store=store, key="k")
    assert again.resumed_from_step == 30 and again.steps == 30


def test_the_finetune_flow_trains_on_the_gpu(tmp_path, monkeypatch):
    import yaml
    from metaflow import Run, namespace

    config = yaml.safe_load((REPO / "configs" / "finetune.yaml").read_text())
    config["optim"]["max_steps"] = 20
    config |= {"save_steps": 10, "max_new_tokens": 8, "max_eval_examples": 8}
    training = tmp_path / "training.yaml"
    training.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("LLMOPS_CHECKPOINT_ROOT", str(tmp_path / "checkpoints"))
    run_id = tmp_path / "run-id"
    result = run_flow("finetune_llm.py", "--release-name", "llm-gpu", "--run-id-file", str(run_id),
                      top=("--config", "training", str(training)))  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    namespace(None)
    report = Run(f"FinetuneLlmFlow/{run_id.read_text().strip()}")["train"].task["training_report"].data
    assert report["device"] == "cuda" and report["steps"] == 20


@pytest.fixture(scope="module")
def vllm_backend(tiny_model):
    pytest.importorskip("vllm", reason="needs the [gpu] extra (vLLM)")
    from llmops.llm.backends import make_backend

    backend = make_backend(str(tiny_model), "vllm", gpu_memory_utilization=0.3, max_model_len=512)
    yield backend
    _shut_down(backend)


def _shut_down(backend):
    """Free the GPU for the next test: drop the engine, collect, empty the CUDA cache."""
    import gc

    import torch

    backend.llm = None
    gc.collect()
    torch.cuda.empty_cache()


def test_vllm_backend_completes_and_streams(vllm_backend):
    from llmops.llm.types import Completion, SamplingParams

    assert vllm_backend.name == "vllm" and vllm_backend.max_context == 512
    prompt = vllm_backend.render([{"role": "user", "content": "Which alias moves?"}])
    done = vllm_backend.complete(prompt, SamplingParams(max_tokens=8))
    assert 0 < done.completion_tokens <= 8 and done.prompt_tokens == vllm_backend.count_tokens(prompt)
    pieces = list(vllm_backend.stream(prompt, SamplingParams(max_tokens=8)))
    assert isinstance(pieces[-1], Completion)
    assert "".join(p for p in pieces if isinstance(p, str)) == done.text


def test_vllm_serves_a_lora_adapter_on_a_llama_base(records, tmp_path):
    pytest.importorskip("vllm", reason="needs the [gpu] extra (vLLM)")
    from llmops.llm.backends import make_backend
    from llmops.llm.finetune import train_lora
    from llmops.llm.tiny import build_tiny_causal_lm
    from llmops.llm.training_config import parse_training_config
    from llmops.llm.types import SamplingParams

    base = build_tiny_causal_lm(tmp_path / "tiny-llama", architecture="llama")
    config = parse_training_config("optim: {max_steps: 20, learning_rate: 0.003}\nsave_steps: 20\n")
    adapter = train_lora(str(base), records[:100], config, tmp_path / "train").adapter_dir
    backend = make_backend(
        str(base), "vllm", adapter=str(adapter), gpu_memory_utilization=0.3, max_model_len=512
    )
    try:
        assert backend.name == "vllm" and backend.adapter_path == str(adapter)
        prompt = backend.render([{"role": "user", "content": "Which alias moves?"}])
        done = backend.complete(prompt, SamplingParams(max_tokens=8))
        assert 0 < done.completion_tokens <= 8
        # 16 requests at once go through the one engine loop together
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(
                pool.map(lambda _: backend.complete(prompt, SamplingParams(max_tokens=8)), range(16))
            )
        assert {a.text for a in answers} == {done.text}  # greedy: the same answer every time
    finally:
        _shut_down(backend)
