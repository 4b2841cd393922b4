"""Fine-tuning building blocks: instruction datasets, training config, example masking, held-out
metrics, the checkpoint store (local and on a real S3 API), and gating lower-is-better metrics."""

import json
import uuid

import pytest

from llmops.faults import FAULTS_ENV, InjectedFailure
from llmops.gates import PolicyError, evaluate_gate, parse_policy
from llmops.llm.base_models import folder_fingerprint, read_folder, write_folder
from llmops.llm.chat_format import build_example, render_prompt
from llmops.llm.checkpoints import CheckpointStore, checkpoint_key, default_root
from llmops.llm.finetune import train_lora
from llmops.llm.lm_eval import compare, exact_match, rouge_l
from llmops.llm.sft_data import (
    DatasetError,
    InstructionRecord,
    dataset_version,
    load_instructions,
    split_records,
)
from llmops.llm.training_config import TrainingConfigError, parse_training_config


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = [{"instruction": f"Question {i}?", "response": f"Answer {i}."} for i in range(10)]


def test_instructions_load_with_optional_input(tmp_path):
    rows = [*GOOD, {"instruction": "Summarise.", "input": "Some text.", "response": "Short."}]
    records = load_instructions(write_jsonl(tmp_path / "d.jsonl", rows))
    assert len(records) == 11 and records[-1].user_message() == "Summarise.\n\nSome text."


def test_every_bad_line_is_named_with_its_number_and_field(tmp_path):
    rows = [GOOD[0], {"instruction": "x"}, "{broken", '["a list"]', {"instruction": "", "response": "y"},
            {**GOOD[1], "extra": 1}, *GOOD[2:6]]  # fmt: skip
    with pytest.raises(DatasetError) as error:
        load_instructions(write_jsonl(tmp_path / "d.jsonl", rows))
    text = str(error.value)
    assert "5 bad line(s)" in text
    assert "line 2: response: Field required" in text and "line 3: not valid JSON" in text
    assert "line 4: expected a JSON object, got list" in text
    assert "line 5: instruction: String should have at least 1 character" in text
    assert "line 6: extra: Extra inputs are not permitted" in text


def test_missing_or_tiny_datasets_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="--dataset: file not found"):
        load_instructions(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="1 record"):
        load_instructions(write_jsonl(tmp_path / "d.jsonl", GOOD[:1]))


def test_dataset_version_is_content_addressed(tmp_path):
    records = load_instructions(write_jsonl(tmp_path / "a.jsonl", GOOD))
    reordered_keys = [json.dumps({"response": r["response"], "instruction": r["instruction"]}) for r in GOOD]
    same = load_instructions(write_jsonl(tmp_path / "b.jsonl", reordered_keys))
    assert dataset_version(records) == dataset_version(same)
    assert dataset_version(records) != dataset_version(records[:-1])


def test_split_is_seeded_stable_as_the_dataset_grows_and_keeps_both_sides():
    records = [InstructionRecord(instruction=f"Q{i}?", response=f"A{i}") for i in range(400)]
    train, held = split_records(records, 0.2, seed=1)
    assert 50 < len(held) < 110 and len(train) + len(held) == 400
    assert not {r.instruction for r in held} & {r.instruction for r in train}
    assert split_records(records, 0.2, seed=1) == (train, held)
    assert split_records(records, 0.2, seed=2) != (train, held)
    # a grown dataset keeps every record on its side: new held-out examples were never trained on
    grown_train, grown_held = split_records(
        [*records, InstructionRecord(instruction="new", response="x")], 0.2, 1
    )
    assert set(map(str, held)) <= set(map(str, grown_held)) and set(map(str, train)) <= set(
        map(str, grown_train)
    )
    assert [len(side) for side in split_records(records[:2], 0.01, seed=0)] == [1, 1]
    assert [len(side) for side in split_records(records[:2], 0.99, seed=0)] == [1, 1]
    with pytest.raises(DatasetError, match="eval_fraction"):
        split_records(records, 1.5, seed=0)


def test_training_config_errors_name_the_field():
    assert parse_training_config("optim: {max_steps: 5}").optim.max_steps == 5
    with pytest.raises(TrainingConfigError, match=r"optim.learning_rate: Input should be greater than 0"):
        parse_training_config("optim: {learning_rate: 0}")
    with pytest.raises(TrainingConfigError, match=r"lora.rank: Extra inputs are not permitted"):
        parse_training_config("lora: {rank: 8}")
    with pytest.raises(TrainingConfigError, match=r"retries: Input should be less than or equal to 4"):
        parse_training_config("retries: 5")  # Metaflow's @retry allows at most 4
    with pytest.raises(TrainingConfigError, match="not valid YAML"):
        parse_training_config("optim: [")


def test_only_the_answer_is_learned(tmp_path):
    from llmops.llm.chat_format import load_tokenizer
    from llmops.llm.tiny import build_tiny_causal_lm

    tokenizer = load_tokenizer(str(build_tiny_causal_lm(tmp_path / "tiny", vocab_size=300)))
    record = InstructionRecord(instruction="Which alias moves?", response="champion")
    example = build_example(tokenizer, record, max_length=256)
    prompt_len = len(tokenizer(render_prompt(tokenizer, record), add_special_tokens=False)["input_ids"])
    assert example["labels"][:prompt_len] == [-100] * prompt_len
    learned = [t for t in example["labels"] if t != -100]
    # the assistant turn as the chat template ends it: the answer, then the end-of-turn token
    assert tokenizer.decode(learned).startswith("champion") and tokenizer.eos_token_id in learned
    assert len(build_example(tokenizer, record, max_length=8)["input_ids"]) == 8


def test_rouge_l_and_exact_match():
    assert rouge_l("llmops models show x", "llmops models show x") == 1.0
    assert rouge_l("a b c d", "a x c y") == pytest.approx(0.5)
    assert rouge_l("", "a") == 0.0 and rouge_l("q", "a") == 0.0
    assert exact_match(" Champion. ", "champion") == 1.0 and exact_match("champions", "champion") == 0.0
    tuned = {"perplexity": 50.0, "rouge_l": 0.4, "exact_match": 0.1, "eval_loss": 3.9}
    base = {"perplexity": 100.0, "rouge_l": 0.1, "exact_match": 0.0, "eval_loss": 4.6}
    assert compare(tuned, base) | {} == {
        **tuned,
        "perplexity_ratio": 0.5,
        "rouge_l_gain": 0.3,
        "exact_match_gain": 0.1,
    }


def test_files_travel_as_artifacts_but_stay_inside_their_folder(tmp_path):
    (tmp_path / "m" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "m" / "sub" / "w.bin").write_bytes(b"123")
    files = read_folder(tmp_path / "m")
    copy = write_folder(files, tmp_path / "copy")
    assert folder_fingerprint(copy) == folder_fingerprint(tmp_path / "m")
    with pytest.raises(ValueError, match="outside"):
        write_folder({"../evil": b"x"}, tmp_path / "other")


def test_one_seed_trains_one_adapter_whether_or_not_the_training_was_interrupted(tmp_path, monkeypatch):
    """Same data, settings and seed: the same adapter, bit for bit, also when the training failed
    and continued from a checkpoint. This is what lets the gate compare a retrained model with
    the champion without reading noise as a regression."""
    from safetensors.torch import load_file

    from llmops.llm.tiny import build_tiny_causal_lm

    base = str(build_tiny_causal_lm(tmp_path / "tiny", vocab_size=300))
    records = [InstructionRecord(instruction=f"Which step is {i}?", response=f"step {i}") for i in range(16)]
    config = parse_training_config("optim: {max_steps: 8, batch_size: 4}\nsave_steps: 3\nmax_length: 64")

    def adapter(name, config=config, **kwargs):
        outcome = train_lora(base, records, config, tmp_path / name, **kwargs)
        return load_file(outcome.adapter_dir / "adapter_model.safetensors"), outcome

    first, _ = adapter("first")
    again, _ = adapter("again")
    store, key = CheckpointStore(str(tmp_path / "store")), "k"
    monkeypatch.setenv(FAULTS_ENV, "finetune.step.5")
    with pytest.raises(InjectedFailure, match=r"finetune\.step\.5"):
        adapter("failed", store=store, key=key)
    monkeypatch.delenv(FAULTS_ENV)
    resumed, outcome = adapter("resumed", store=store, key=key)
    other, _ = adapter("other", config=config.model_copy(update={"seed": 1}))
    assert outcome.resumed_from_step == 3 and outcome.steps == 8
    assert first.keys() == again.keys() == resumed.keys()
    assert all((first[k] == again[k]).all() and (first[k] == resumed[k]).all() for k in first)
    assert any((first[k] != other[k]).any() for k in first)


def test_lora_target_modules_the_base_lacks_are_named_with_what_it_has(tmp_path):
    from llmops.llm.tiny import build_tiny_causal_lm

    base = str(build_tiny_causal_lm(tmp_path / "tiny", vocab_size=300))  # GPT-2 layers: c_attn, ...
    records = [InstructionRecord(instruction=f"Which step is {i}?", response=f"step {i}") for i in range(16)]
    config = parse_training_config("lora: {target_modules: [q_proj, c_attn, v_proj]}\noptim: {max_steps: 1}")
    with pytest.raises(
        TrainingConfigError,
        match=r"lora.target_modules: q_proj, v_proj not in .*tiny; its linear layers are c_attn, .*c_proj",
    ):
        train_lora(base, records, config, tmp_path / "out")
    assert not (tmp_path / "out" / "adapter").exists()


def _checkpoint(folder, step):
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(bytes([step]) * 10)
    (folder / "state" / "trainer_state.json").parent.mkdir()
    (folder / "state" / "trainer_state.json").write_text(json.dumps({"step": step}))
    return folder


def _exercise(store, tmp_path):
    key = checkpoint_key({"base": "x", "data": "sft-1"})
    assert (
        key
        == checkpoint_key({"data": "sft-1", "base": "x"})
        != checkpoint_key({"base": "y", "data": "sft-1"})
    )
    assert store.latest(key) is None
    store.upload(key, 5, _checkpoint(tmp_path / "c5", 5))
    store.upload(key, 10, _checkpoint(tmp_path / "c10", 10))
    assert store.latest(key) == 10
    restored = store.download(key, 10, tmp_path / "restored")
    assert restored.name == "checkpoint-10"
    assert json.loads((restored / "state" / "trainer_state.json").read_text()) == {"step": 10}
    assert (restored / "adapter_model.safetensors").read_bytes() == bytes([10]) * 10
    return key


def test_local_checkpoint_store_keeps_the_latest_only(tmp_path):
    store = CheckpointStore(str(tmp_path / "store"))
    key = _exercise(store, tmp_path)
    assert sorted(p.name for p in (tmp_path / "store" / key).iterdir()) == ["LATEST", "checkpoint-10"]


def test_s3_checkpoint_store_on_a_real_s3_api(tmp_path, s3_env):
    import boto3

    prefix = f"unit-{uuid.uuid4().hex[:8]}/checkpoints"  # the server is shared by the session
    store = CheckpointStore(f"s3://llmops/{prefix}")
    key = _exercise(store, tmp_path)
    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="llmops", Prefix=f"{prefix}/")["Contents"]]
    assert all(k.startswith(f"{prefix}/{key}/") for k in keys)
    assert not [k for k in keys if "checkpoint-5/" in k] and f"{prefix}/{key}/LATEST" in keys


def test_checkpoint_root_follows_the_datastore(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMOPS_CHECKPOINT_ROOT", raising=False)
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path))
    assert default_root("s3", "s3://b/metaflow/") == "s3://b/metaflow/llmops/checkpoints"
    assert default_root("local", "/x/.metaflow") == str(tmp_path / "checkpoints")
    monkeypatch.setenv("LLMOPS_CHECKPOINT_ROOT", "s3://other/ckpt")
    assert default_root("local", None) == "s3://other/ckpt"
    with pytest.raises(ValueError, match=r"checkpoint root: .* is not a valid S3 bucket name"):
        CheckpointStore("s3:///nobucket")


POLICY = """
model: llm
metrics: {perplexity_ratio: {max: 0.9}}
lower_is_better: [eval_loss, perplexity_ratio]
regression: {eval_loss: 0.05, rouge_l: 0.05}
"""


def test_regression_on_lower_is_better_metrics_counts_a_rise_as_worse():
    policy = parse_policy(POLICY)
    champion = {"eval_loss": 4.0, "rouge_l": 0.30, "perplexity_ratio": 0.5}
    better = evaluate_gate(policy, {"eval_loss": 3.5, "rouge_l": 0.31, "perplexity_ratio": 0.4},
                           champion_scores=champion, champion_version="v1")  # fmt: skip
    assert better.passed
    rules = {r.rule: r for r in better.rules}
    assert rules["regression.eval_loss"].value == pytest.approx(-0.5)
    worse = evaluate_gate(policy, {"eval_loss": 4.2, "rouge_l": 0.31, "perplexity_ratio": 0.4},
                          champion_scores=champion, champion_version="v1")  # fmt: skip
    assert [r.rule for r in worse.failed_rules] == ["regression.eval_loss"]
    assert {r.rule: r for r in worse.rules}["regression.eval_loss"].value == pytest.approx(0.2)


def test_lower_is_better_must_name_a_gated_metric():
    with pytest.raises(
        PolicyError, match=r"lower_is_better: \['eval_los'\] are not under metrics or regression"
    ):
        parse_policy(POLICY.replace("[eval_loss, perplexity_ratio]", "[eval_los, perplexity_ratio]"))


def test_the_shipped_llm_policy_and_training_config_parse():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    policy = parse_policy((repo / "evals" / "llm.yaml").read_text())
    assert policy.model == "llm" and "eval_loss" in policy.lower_is_better
    config = parse_training_config((repo / "configs" / "finetune.yaml").read_text())
    assert config.resources.gpu >= 1 and config.save_steps < config.optim.max_steps
    assert len(load_instructions(repo / "datasets" / "llmops_instructions.jsonl")) >= 60
