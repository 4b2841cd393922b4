"""A tiny causal LM built locally, for tests, CI and laptops without a model hub.

    python -m llmops.llm.tiny [FOLDER]      # default: $LLMOPS_HOME/models/tiny-gpt2

Trains a byte-level BPE tokenizer on the given texts (default: the project's docs/), builds a
2-layer GPT-2 with random weights and saves both with ``save_pretrained``, so everything loads
through the real ``from_pretrained`` path. It writes plausible tokens, not sense.
"""

from __future__ import annotations

import sys
from pathlib import Path

from llmops import paths

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


def default_texts() -> list[str]:
    docs = paths.docs_dir()  # the project's, where you run: an installed package has none beside it
    texts = [p.read_text() for p in sorted(docs.glob("*.md"))]
    return texts or ["The quick brown fox jumps over the lazy dog."] * 10


def build_tiny_causal_lm(
    folder: str | Path,
    texts: list[str] | None = None,
    *,
    vocab_size: int = 512,
    n_layer: int = 2,
    n_embd: int = 64,
    n_positions: int = 512,
    seed: int = 0,
    architecture: str = "gpt2",
) -> Path:
    """Write a tokenizer and a GPT-2 (or, with ``architecture="llama"``, a Llama) model to
    ``folder``; returns the folder. Llama is what vLLM serves LoRA adapters on."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts or default_texts(), vocab_size=vocab_size, special_tokens=SPECIAL)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        unk_token="<|endoftext|>",
        model_max_length=n_positions,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    if architecture == "llama":
        llama = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=n_embd, intermediate_size=4 * n_embd,
            num_hidden_layers=n_layer, num_attention_heads=2, num_key_value_heads=2,
            max_position_embeddings=n_positions, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        LlamaForCausalLM(llama).save_pretrained(folder)
        return folder
    if architecture != "gpt2":
        # programming error: tests and the named tiny base pass one of the two
        raise ValueError(f"architecture: {architecture!r} is not gpt2 or llama")
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else paths.models_dir() / "tiny-gpt2"
    print(f"tiny causal LM written to {build_tiny_causal_lm(target)}")
