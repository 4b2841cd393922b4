"""Held-out evaluation of a causal LM on instruction records: what the fine-tune gate reads.

    scores, samples = score_model(model, tokenizer, held_out, max_length=512, max_new_tokens=64)

- ``eval_loss`` / ``perplexity``: mean cross-entropy over the response tokens only (the prompt is
  given), and its exponential;
- ``exact_match``: the greedy answer equals the reference after normalising case and spaces;
- ``rouge_l``: ROUGE-L F1 over lowercase word tokens (longest common subsequence);
- ``faithfulness`` (records with a context in ``input`` only): the share of the answer's sentences
  that the context supports, no LLM judge needed (:func:`faithfulness`).

:func:`compare` adds the tuned-vs-base figures the policy can gate on: ``perplexity_ratio``
(tuned / base, lower is better), ``rouge_l_gain`` and ``faithfulness_gain`` (tuned − base).
The RAG evaluation scores generated answers against their retrieved context with the same
:func:`faithfulness`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from llmops.llm.chat_format import build_example, render_prompt
from llmops.llm.sft_data import InstructionRecord
from llmops.text import sentences, terms

_WORD = re.compile(r"\w+|[^\w\s]")
_CITATION = re.compile(r"\[[^\]]*\]")
SUPPORT_THRESHOLD = 0.7  # share of a sentence's content words found in the context


def normalize(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".!")


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 between two texts, over lowercase word and punctuation tokens."""
    pred, ref = _WORD.findall(prediction.lower()), _WORD.findall(reference.lower())
    if not pred or not ref:
        return 0.0
    previous = [0] * (len(ref) + 1)  # one row of the LCS table at a time: O(len(ref)) memory
    for token in pred:
        row = [0]
        for j, other in enumerate(ref, start=1):
            row.append(previous[j - 1] + 1 if token == other else max(previous[j], row[j - 1]))
        previous = row
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def faithfulness(answer: str, context: str, threshold: float = SUPPORT_THRESHOLD) -> float:
    """The share of the answer's sentences supported by the context: a sentence is supported when
    at least ``threshold`` of its content words (lowercase, stop words dropped, citations in
    brackets removed) occur in the context. Answers that say nothing score 0. Lexical, so it
    rewards answers that stay with the context's words; a paraphrase scores lower than a quote,
    which is why the gate reads it beside ROUGE-L rather than alone."""
    available = set(terms(context))
    claims = [words for s in sentences(_CITATION.sub(" ", answer)) if (words := terms(s))]
    if not claims:
        return 0.0
    supported = sum(sum(w in available for w in words) / len(words) >= threshold for words in claims)
    return supported / len(claims)


def heldout_loss(
    model: Any, tokenizer: Any, records: list[InstructionRecord], max_length: int, batch_size: int = 4
) -> float:
    """Mean cross-entropy per response token (the prompt tokens are context, not scored)."""
    import torch

    total, tokens = 0.0, 0
    model.eval()
    for start in range(0, len(records), batch_size):
        examples = [build_example(tokenizer, r, max_length) for r in records[start : start + batch_size]]
        width = max(len(e["input_ids"]) for e in examples)
        pad = tokenizer.pad_token_id

        def padded(key: str, fill: int, examples=examples, width=width) -> Any:
            rows = [e[key] + [fill] * (width - len(e[key])) for e in examples]
            return torch.tensor(rows, device=model.device)

        ids, mask, labels = padded("input_ids", pad), padded("attention_mask", 0), padded("labels", -100)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits
        # token t predicts token t+1; only answer positions are scored, and only they are upcast
        # to float32 (the whole (B, T, V) in float32 would not fit beside a 7B model): (N, V)
        scored = labels[:, 1:] != -100
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1][scored].float(), labels[:, 1:][scored], reduction="sum"
        )
        total += float(loss)
        tokens += int(scored.sum())
    return total / max(tokens, 1)


def generate_answers(
    model: Any, tokenizer: Any, records: list[InstructionRecord], max_new_tokens: int
) -> list[str]:
    """Greedy answers, one record at a time (no padding effects on a small model)."""
    import torch

    from llmops.progress import Progress

    answers = []
    progress = Progress("generated", len(records), "held-out answers")
    model.eval()
    for record in records:
        inputs = tokenizer(render_prompt(tokenizer, record), return_tensors="pt", add_special_tokens=False)
        inputs = inputs.to(model.device)
        with torch.inference_mode():
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
        new = output[0, inputs["input_ids"].shape[1] :]
        answers.append(tokenizer.decode(new, skip_special_tokens=True).strip())
        progress.update(len(answers))
    return answers


def score_model(
    model: Any,
    tokenizer: Any,
    records: list[InstructionRecord],
    *,
    max_length: int,
    max_new_tokens: int,
    max_generated: int | None = None,
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """(scores, samples): loss over every record, task metrics over the first ``max_generated``."""
    loss = heldout_loss(model, tokenizer, records, max_length)
    generated = records[:max_generated] if max_generated else records
    answers = generate_answers(model, tokenizer, generated, max_new_tokens)
    scores = {
        "eval_loss": round(loss, 6),
        "perplexity": round(math.exp(min(loss, 50.0)), 4),
        "exact_match": round(
            sum(map(exact_match, answers, [r.response for r in generated])) / len(generated), 6
        ),
        "rouge_l": round(sum(map(rouge_l, answers, [r.response for r in generated])) / len(generated), 6),
    }
    grounded = [(a, r.input) for a, r in zip(answers, generated, strict=True) if r.input]
    if grounded:
        scores["faithfulness"] = round(sum(faithfulness(a, c) for a, c in grounded) / len(grounded), 6)
    samples = [
        {"prompt": r.user_message(), "reference": r.response, "answer": a}
        for r, a in zip(generated, answers, strict=True)
    ]
    return scores, samples


def compare(tuned: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """The tuned model's scores plus how they compare with the base model's."""
    return {
        **tuned,
        "perplexity_ratio": round(tuned["perplexity"] / base["perplexity"], 6),
        "rouge_l_gain": round(tuned["rouge_l"] - base["rouge_l"], 6),
        "exact_match_gain": round(tuned["exact_match"] - base["exact_match"], 6),
    } | (
        {"faithfulness_gain": round(tuned["faithfulness"] - base["faithfulness"], 6)}
        if "faithfulness" in tuned and "faithfulness" in base
        else {}
    )


def load_for_eval(
    base_path: str, adapter_dir: str | None, device: str, dtype: str, revision: str | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer): the base, or the base with a LoRA adapter on top."""
    from llmops.llm.chat_format import load_tokenizer
    from llmops.llm.finetune import load_causal_lm

    model = load_causal_lm(base_path, device, dtype, revision)
    if adapter_dir is None:
        return model, load_tokenizer(base_path, revision)
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_dir).to(device), load_tokenizer(adapter_dir)
