"""Generator candidates (llmops.rag.candidates): what cannot be evaluated is named, and the best
candidate under the policy wins, with extractive as the floor."""

import pytest


def test_the_best_candidate_under_the_policy_wins_and_extractive_is_the_floor():
    from llmops.gates import parse_policy
    from llmops.rag.candidates import choose_generator

    policy = parse_policy("model: rag\nmetrics:\n  hit_rate: {min: 0.8}\n  rouge_l: {min: 0.15}\n")
    extractive = {"name": "extractive", "scores": {"hit_rate": 0.9, "answer_key": 0.6, "rouge_l": 0.3}}
    better = {"name": "base", "scores": {"hit_rate": 0.9, "answer_key": 0.7, "rouge_l": 0.2}}
    tied = {"name": "tied", "scores": dict(extractive["scores"])}
    failing = {"name": "champion", "scores": {"hit_rate": 0.9, "answer_key": 0.9, "rouge_l": 0.1}}
    chosen, why = choose_generator([extractive, tied, better, failing], policy)
    assert chosen == 2 and why.startswith("base chosen over extractive: answer_key 0.700 vs 0.600")
    assert choose_generator([extractive, tied, failing], policy)[0] == 0  # a tie keeps the floor
    assert choose_generator([extractive], policy) == (0, "extractive: the only one")


def test_generator_candidates_name_what_is_missing(monkeypatch, tmp_path):
    from llmops.rag.candidates import CandidateError, resolve_candidates

    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path))  # an empty registry: no LLM champion
    found, notes = resolve_candidates("extractive,champion,transformers:/models/x", llm_release="llm-none")
    assert found == [
        {"name": "extractive", "spec": "extractive"},
        {"name": "transformers:/models/x", "spec": "transformers:/models/x"},
    ]
    assert notes == ["champion: not evaluated (no champion of 'llm-none' yet)"]
    with pytest.raises(CandidateError, match=r"--generators: 'gpt' is not a generator"):
        resolve_candidates("extractive,gpt")
