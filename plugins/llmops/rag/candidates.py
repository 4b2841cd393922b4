"""Which generator a RAG release uses, decided on evidence: every candidate answers the same
golden questions from the same retrieved contexts, and the best one under the gate policy wins.

Candidates (``--generators`` of flows/evaluate_rag.py, comma-separated):

    extractive          always available: the floor every other candidate must beat
    base                the shipped base LLM (SmolLM2-135M-Instruct) when it is installed
    champion            the champion of the fine-tuned LLM release (flows/finetune_llm.py) when
                        there is one and it holds merged weights (finetune with --merge)
    transformers:/dir   any local model folder; openai:http://host:port/v1#model any endpoint

A candidate that fails an absolute metric rule of the policy is out. Among the rest the highest
``(answer_key, rouge_l)`` wins: key facts stated first, then overlap with the reference answer.
An LLM candidate wins only when it scores strictly above the extractive one, because the
extractive answer costs nothing to serve and never invents a sentence.
"""

from __future__ import annotations

from typing import Any

from llmops.errors import LlmopsError
from llmops.gates import GatePolicy, evaluate_gate

BASE_MODEL = "smollm2-135m-instruct"
RANKED_BY = ("answer_key", "rouge_l")


class CandidateError(LlmopsError, ValueError):
    """A --generators value that names nothing usable; says which entry."""


def resolve_candidates(spec: str, llm_release: str = "llm") -> tuple[list[dict[str, str]], list[str]]:
    """[{"name", "spec"}] for the candidates of ``spec`` that exist here (extractive first), and a
    note for each named one that is not available (so a laptop without the base model still runs)."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise CandidateError("--generators: name at least one generator (e.g. extractive)")
    found: list[dict[str, str]] = [{"name": "extractive", "spec": "extractive"}]
    notes: list[str] = []
    for name in names:
        if name == "extractive":
            continue
        if name == "base":
            path, why = _base_model_path()
        elif name == "champion":
            path, why = _llm_champion_path(llm_release)
        elif name.startswith(("transformers:", "openai:")):
            found.append({"name": name.split("#")[0], "spec": name})
            continue
        else:
            raise CandidateError(
                f"--generators: {name!r} is not a generator (use extractive, base, champion, "
                "transformers:/model/folder or openai:http://host:port/v1#model)"
            )
        if path:
            found.append({"name": name, "spec": f"transformers:{path}"})
        else:
            notes.append(f"{name}: not evaluated ({why})")
    return found, notes


def _base_model_path() -> tuple[str | None, str]:
    try:
        from llmops.llm.base_models import resolve_base_model
    except ImportError:
        return None, f"the base model {BASE_MODEL} is not part of this installation"
    try:
        return str(resolve_base_model(BASE_MODEL).path), ""
    except Exception as exc:  # not installed here: evaluate the other candidates
        return None, f"{BASE_MODEL} cannot be resolved: {exc}"


def _llm_champion_path(name: str) -> tuple[str | None, str]:
    from llmops.llm.release import served_model
    from llmops.registry import Registry

    version = Registry().find(name)
    if version is None:
        return None, f"no champion of {name!r} yet"
    served = served_model(version)
    if served.adapter is not None:
        return None, f"{version.tag} is an adapter without merged weights (fine-tune with --merge)"
    return served.model, ""


def choose_generator(candidates: list[dict[str, Any]], policy: GatePolicy) -> tuple[int, str]:
    """Index of the winning candidate (each has "name" and "scores"; candidate 0 is extractive)
    and a sentence saying why."""
    absolute = policy.model_copy(update={"regression": {}})  # vs the champion: the gate's own job

    def passes(scores: dict[str, float]) -> bool:
        return evaluate_gate(absolute, scores).passed

    def rank(scores: dict[str, float]) -> tuple[float, ...]:
        return tuple(float(scores.get(m, 0.0)) for m in RANKED_BY)

    best = 0
    for i, candidate in enumerate(candidates[1:], 1):
        if passes(candidate["scores"]) and rank(candidate["scores"]) > rank(candidates[best]["scores"]):
            best = i
    floor = candidates[0]
    if best == 0:
        why = "no other candidate passed the policy and scored above it"
        return 0, f"{floor['name']} chosen: {why}" if len(
            candidates
        ) > 1 else f"{floor['name']}: the only one"
    winner = candidates[best]
    gains = ", ".join(
        f"{m} {winner['scores'].get(m, 0):.3f} vs {floor['scores'].get(m, 0):.3f}" for m in RANKED_BY
    )
    return best, f"{winner['name']} chosen over {floor['name']}: {gains}"
