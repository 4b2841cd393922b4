"""The embedder against sentence-transformers itself: the same vectors from a folder in
sentence-transformers' layout, without importing it (or transformers, for a BERT encoder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmops.rag import bert
from llmops.rag.embeddings import (
    DEFAULT_MODEL,
    MAX_BATCH_FACTOR,
    Embedder,
    EmbeddingError,
    length_batches,
    resolve_model_path,
)
from tests.fresh_process import imported_by

TEXTS = [
    "The volcano erupted.",
    "",
    "  spaces around  ",
    "Ünïcode, emoji 🙂 and CamelCaseWords_with_underscores",
    " ".join(f"word{i}" for i in range(400)),  # over the 256-token limit: truncated
    *(f"Sentence {i} about the gate and the registry. " * (i % 4 + 1) for i in range(12)),
]


def folder_with(
    tmp_path: Path, pooling: dict | None = None, extra_module: str | None = None, files: dict | None = None
) -> Path:
    """The packaged model's files, linked into a folder whose pooling, modules or other files
    (``files``: name -> text) differ."""
    source = resolve_model_path(DEFAULT_MODEL)
    folder = tmp_path / "model"
    (folder / "1_Pooling").mkdir(parents=True)
    for file in source.iterdir():
        if file.is_file():
            (folder / file.name).symlink_to(file)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps(pooling or json.loads((source / "1_Pooling" / "config.json").read_text()))
    )
    if extra_module:
        modules = json.loads((source / "modules.json").read_text())
        modules.append({"idx": 3, "name": "3", "path": "3_Extra", "type": extra_module})
        (folder / "modules.json").unlink()
        (folder / "modules.json").write_text(json.dumps(modules))
    for name, text in (files or {}).items():
        (folder / name).unlink()
        (folder / name).write_text(text)
    return folder


def sentence_transformers_vectors(folder: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)


@pytest.mark.parametrize(
    "pooling",
    [
        None,
        {"word_embedding_dimension": 384, "pooling_mode_cls_token": True, "pooling_mode_max_tokens": True},
    ],
    ids=["mean", "cls+max"],
)
def test_vectors_are_sentence_transformers_own(tmp_path, pooling):
    folder = folder_with(tmp_path, pooling)
    ours = Embedder(str(folder), batch_size=5)
    vectors = ours.embed(TEXTS)
    expected = sentence_transformers_vectors(folder, TEXTS)
    assert vectors.shape == expected.shape == (len(TEXTS), ours.dimension)
    np.testing.assert_allclose(vectors, expected, atol=2e-5)
    assert ours.dimension == (384 if pooling is None else 768)


def test_the_folders_default_prompt_goes_before_every_text_as_in_sentence_transformers(tmp_path):
    settings = {"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": "query"}
    folder = folder_with(tmp_path, files={"config_sentence_transformers.json": json.dumps(settings)})
    vectors = Embedder(str(folder)).embed(TEXTS[:4])
    np.testing.assert_allclose(vectors, sentence_transformers_vectors(folder, TEXTS[:4]), atol=2e-5)
    assert not np.allclose(vectors, Embedder().embed(TEXTS[:4]), atol=1e-3)  # the prompt changed them


def test_without_a_max_seq_length_the_tokenizers_limit_truncates_as_in_sentence_transformers(tmp_path):
    tokenizer_config = json.loads((resolve_model_path(DEFAULT_MODEL) / "tokenizer_config.json").read_text())
    folder = folder_with(tmp_path, files={
        "sentence_bert_config.json": json.dumps({"do_lower_case": False}),
        "tokenizer_config.json": json.dumps(tokenizer_config | {"model_max_length": 40}),
    })  # fmt: skip
    embedder = Embedder(str(folder))
    assert embedder.max_tokens == 40 < Embedder().max_tokens
    np.testing.assert_allclose(embedder.embed(TEXTS), sentence_transformers_vectors(folder, TEXTS), atol=2e-5)


def test_other_architectures_run_through_transformers_with_the_same_result(monkeypatch):
    direct = Embedder().embed(TEXTS[:5])
    monkeypatch.setattr(bert, "runs", lambda config, folder: False)
    through_transformers = Embedder()
    np.testing.assert_allclose(through_transformers.embed(TEXTS[:5]), direct, atol=2e-5)
    assert not isinstance(through_transformers._encoder, bert.BertEncoder)


def test_a_module_or_pooling_the_embedder_does_not_run_is_named(tmp_path):
    dense = folder_with(tmp_path / "a", extra_module="sentence_transformers.models.Dense")
    with pytest.raises(EmbeddingError, match=r"--embedding-model: .* has a \S+Dense module"):
        Embedder(str(dense)).embed(["text"])
    weighted = folder_with(tmp_path / "b", {"pooling_mode": "weightedmean"})
    with pytest.raises(EmbeddingError, match=r"--embedding-model: .* pools by weightedmean"):
        Embedder(str(weighted)).embed(["text"])
    settings = {"prompts": {"query": "Represent the question: "}, "default_prompt_name": "query"}
    pooling = json.loads((resolve_model_path(DEFAULT_MODEL) / "1_Pooling" / "config.json").read_text())
    without_prompt = folder_with(
        tmp_path / "d", pooling | {"include_prompt": False},
        files={"config_sentence_transformers.json": json.dumps(settings)},
    )  # fmt: skip
    with pytest.raises(EmbeddingError, match=r"--embedding-model: .*include_prompt: false"):
        Embedder(str(without_prompt)).embed(["text"])
    broken = folder_with(tmp_path / "c", files={"config.json": "{not json"})
    with pytest.raises(EmbeddingError, match=r"--embedding-model: .*config.json is not valid JSON"):
        Embedder(str(broken)).embed(["text"])


def test_embedding_imports_neither_transformers_nor_sentence_transformers():
    """The point of llmops.rag.bert: a process that embeds pays for torch, not for transformers."""
    code = "from llmops.rag.embeddings import Embedder; e = Embedder(); e.embed(['a']); e.count_tokens(['a'])"
    assert imported_by(code, ("transformers", "sentence_transformers")) == []


def test_texts_are_batched_by_length_within_one_token_budget():
    lengths = [200, 12, 180, 30, 7, 150, *([10] * 40), 64, 199]
    batches = length_batches(lengths, batch_size=4)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))  # each once
    widths = [lengths[batch[0]] for batch in batches]
    assert widths == sorted(widths, reverse=True)  # longest first
    for batch in batches:
        assert lengths[batch[0]] == max(lengths[i] for i in batch)  # as wide as its first text
        assert len(batch) * lengths[batch[0]] <= 4 * 200  # the longest batch's padded tokens
        assert len(batch) <= MAX_BATCH_FACTOR * 4
    assert batches[0] == [0, 47, 2, 5]  # the four longest
    assert max(len(b) for b in batches) == MAX_BATCH_FACTOR * 4  # short texts, many to a batch
    assert length_batches([], 4) == []


def test_bfloat16_vectors_match_float32_and_a_bad_precision_is_named():
    texts = [TEXTS[0], TEXTS[3], TEXTS[-1]]
    exact = Embedder().embed(texts)
    half = Embedder(precision="bfloat16").embed(texts)
    assert half.dtype == np.float32
    assert (exact * half).sum(axis=1).min() >= 0.999
    assert str(Embedder(precision="float32").compute_dtype) == "torch.float32"
    with pytest.raises(
        EmbeddingError, match="LLMOPS_EMBED_PRECISION: 'int8' is not auto, float32 or bfloat16"
    ):
        Embedder(precision="int8")


def test_embed_reports_progress_after_each_batch():
    reports: list[tuple[int, int]] = []
    texts = TEXTS[:6]
    vectors = Embedder(batch_size=2).embed(texts, progress=lambda done, total: reports.append((done, total)))
    assert np.allclose(vectors, Embedder().embed(texts), atol=1e-5)  # the same vectors
    assert len(reports) >= 2 and reports[-1] == (6, 6)  # per batch, the last one all of them
    assert [done for done, _ in reports] == sorted({done for done, _ in reports})  # growing
