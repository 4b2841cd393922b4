"""A BERT encoder in plain torch: the embedder's forward pass without importing transformers.

Importing transformers costs about 7 s of CPU and sentence-transformers about 11, where torch alone
takes 2.5; every process that embeds (an index build's tasks, the evaluation's steps, the RAG
service) paid that before its first vector. Most sentence-embedding models are BERT encoders
(all-MiniLM, bge, e5, gte), so the embedder runs those through this module, reading the weights
from ``model.safetensors``, and any other architecture through transformers' ``AutoModel``
(``llmops.rag.embeddings``). ``tests/unit/test_embeddings.py`` holds it to sentence-transformers'
own vectors.

Module and parameter names follow the checkpoint's (``encoder.layer.0.attention.self.query``...),
so the weights load with ``load_state_dict`` and nothing is renamed by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS = "model.safetensors"
# checkpoint keys that are not the encoder: a task head, the pooler, a buffer some versions saved
_NOT_ENCODER = ("pooler.", "cls.", "embeddings.position_ids")


def runs(config: dict[str, Any], folder: Path) -> bool:
    """Whether this module runs the model in ``folder`` (its ``config.json`` as ``config``)."""
    return (
        config.get("model_type") == "bert"
        and config.get("position_embedding_type", "absolute") == "absolute"
        and config.get("hidden_act", "gelu") == "gelu"
        and (folder / WEIGHTS).is_file()
    )


class _Embeddings(nn.Module):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        hidden = config["hidden_size"]
        self.word_embeddings = nn.Embedding(config["vocab_size"], hidden)
        self.position_embeddings = nn.Embedding(config["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(config.get("type_vocab_size", 2), hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=config.get("layer_norm_eps", 1e-12))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        # one sentence per input: every token is of type 0
        x = self.word_embeddings(ids) + self.position_embeddings(positions)
        return self.LayerNorm(x + self.token_type_embeddings.weight[0])


class _DenseNorm(nn.Module):
    """A projection added to the residual stream, then layer norm (BERT's two "output" blocks)."""

    def __init__(self, width: int, hidden: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(width, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _QKV(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)


class _Attention(nn.Module):
    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.self = _QKV(hidden)
        self.output = _DenseNorm(hidden, hidden, eps)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, width: int):
        super().__init__()
        self.dense = nn.Linear(hidden, width)


class _Layer(nn.Module):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        hidden, eps = config["hidden_size"], config.get("layer_norm_eps", 1e-12)
        self.heads = config["num_attention_heads"]
        self.attention = _Attention(hidden, eps)
        self.intermediate = _Intermediate(hidden, config["intermediate_size"])
        self.output = _DenseNorm(config["intermediate_size"], hidden, eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        batch, length, hidden = x.shape
        qkv = self.attention.self

        def split(t: torch.Tensor) -> torch.Tensor:  # (batch, heads, length, head width)
            return t.view(batch, length, self.heads, hidden // self.heads).transpose(1, 2)

        query, key, value = split(qkv.query(x)), split(qkv.key(x)), split(qkv.value(x))
        mixed = F.scaled_dot_product_attention(query, key, value, attn_mask=keep)
        x = self.attention.output(mixed.transpose(1, 2).reshape(batch, length, hidden), x)
        return self.output(F.gelu(self.intermediate.dense(x)), x)


class _Layers(nn.Module):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(config) for _ in range(config["num_hidden_layers"]))


class BertEncoder(nn.Module):
    """Token ids and attention mask in, the last layer's hidden states out (``last_hidden_state``)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.embeddings = _Embeddings(config)
        self.encoder = _Layers(config)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # padding is never attended to; a batch without padding needs no mask (a faster kernel)
        keep = None if bool(mask.all()) else mask.bool()[:, None, None, :]
        x = self.embeddings(ids)
        for layer in self.encoder.layer:
            x = layer(x, keep)
        return x

    @classmethod
    def load(cls, folder: Path, config: dict[str, Any]) -> BertEncoder:
        """The encoder with the weights of ``folder/model.safetensors``, in eval mode, float32.

        Raises :class:`~llmops.rag.embeddings.EmbeddingError` naming the weights that are missing
        or unexpected."""
        from safetensors.torch import load_file

        from llmops.rag.embeddings import EmbeddingError

        weights = {}
        for key, tensor in load_file(str(folder / WEIGHTS)).items():
            key = key.removeprefix("bert.")
            if not key.startswith(_NOT_ENCODER):
                weights[key] = tensor.float()
        encoder = cls(config)
        missing, unexpected = encoder.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise EmbeddingError(
                f"{folder / WEIGHTS} is not a BERT encoder's weights: "
                f"missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        return encoder.eval()
