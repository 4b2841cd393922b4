"""What a causal LM reads and writes: its tokenizer, the prompt and target an instruction record
renders to, and the masked training example built from them.

Training (:mod:`llmops.llm.finetune`) and held-out evaluation (:mod:`llmops.llm.lm_eval`) render
through these same functions, so the model is scored on exactly the layout it learned: the chat
template's user turn where the tokenizer has one, else a plain ``user: ... assistant:`` layout.
"""

from __future__ import annotations

from typing import Any

from llmops.llm.sft_data import InstructionRecord


def load_tokenizer(path: str, revision: str | None = None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    if tokenizer.pad_token_id is None:  # many causal LMs ship none: padding reuses the end token
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def render_prompt(tokenizer: Any, record: InstructionRecord) -> str:
    """The user turn, ready for the assistant's answer (the chat template, or a plain layout)."""
    messages = [{"role": "user", "content": record.user_message()}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"user: {record.user_message()}\nassistant:"


def render_target(tokenizer: Any, record: InstructionRecord) -> str:
    """What the model should write after :func:`render_prompt`: the answer and its end marker."""
    prompt = render_prompt(tokenizer, record)
    if getattr(tokenizer, "chat_template", None):
        messages = [
            {"role": "user", "content": record.user_message()},
            {"role": "assistant", "content": record.response},
        ]
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if full.startswith(prompt):
            return full[len(prompt) :]
    return f" {record.response}{tokenizer.eos_token or ''}"


def build_example(tokenizer: Any, record: InstructionRecord, max_length: int) -> dict[str, list[int]]:
    """input_ids and labels; the prompt's labels are -100 so only the answer is learned."""
    prompt = tokenizer(render_prompt(tokenizer, record), add_special_tokens=False)["input_ids"]
    target = tokenizer(render_target(tokenizer, record), add_special_tokens=False)["input_ids"]
    prompt = prompt[-max(1, max_length - len(target)) :]  # keep the end of a long prompt
    ids = (prompt + target)[:max_length]
    labels = ([-100] * len(prompt) + target)[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
