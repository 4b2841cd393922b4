"""Generator candidates (llmops.rag.candidates): what cannot be evaluated is named, and the best
candidate under the policy wins, with extractive as the floor."""

import json
from pathlib import Path

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


def test_the_upper_bound_holds_exactly_and_tightens_with_more_questions():
    from llmops.rag.candidates import mean_upper_bound

    assert mean_upper_bound([], 24, 0.05) == 1.0
    assert mean_upper_bound([0.5] * 24, 24, 0.05) == 0.5  # all answered: the mean itself
    # the exact bound: the 18 questions left count 1.0 each
    assert mean_upper_bound([0.0] * 6, 24, 1e-300) == pytest.approx(18 / 24)
    six, twelve = mean_upper_bound([0.1] * 6, 24, 0.01), mean_upper_bound([0.1] * 12, 24, 0.01)
    assert 0.1 < twelve < six < 18 / 24 + 0.1
    assert mean_upper_bound([0.1] * 6, 24, 0.001) > six  # more confidence, a looser bound


def test_a_hopeless_candidate_stops_at_the_first_look_and_a_close_one_survives():
    from llmops.gates import parse_policy
    from llmops.rag.candidates import answer_in_rounds, answer_order, limits, round_schedule

    policy = parse_policy("model: rag\nmetrics:\n  hit_rate: {min: 0.8}\n  rouge_l: {min: 0.15}\n")
    checks = limits({"answer_key": 0.6}, policy)
    assert checks == [("answer_key", 0.6, "extractive floor"), ("rouge_l", 0.15, "policy min")]
    assert round_schedule(24) == [6, 12, 24] and round_schedule(8) == [6, 8] and round_schedule(4) == [4]
    order = answer_order(24, "golden-abc")
    assert sorted(order) == list(range(24)) and order == answer_order(24, "golden-abc") != list(range(24))
    asked: list[list[int]] = []

    def answering(key: float):
        def answer(indices):
            asked.append(indices)
            return [{"scores": {"answer_key": key, "rouge_l": 0.3}, "index": i} for i in indices]

        return answer

    answered, stop = answer_in_rounds(answering(0.05), 24, order, checks)
    assert asked == [order[:6]] and [i for i, _ in answered] == sorted(order[:6])
    assert stop.round == 1 and stop.answered == 6 and stop.metric == "answer_key"
    assert stop.bound < 0.6 and stop.limit == 0.6
    assert "stopped after round 1 (6/24 answered): answer_key at most" in stop.sentence("base")
    asked.clear()
    answered, stop = answer_in_rounds(answering(0.55), 24, order, checks)  # could still reach 0.6
    assert stop is None and [len(a) for a in asked] == [6, 6, 12]
    assert [i for i, _ in answered] == list(range(24))
    answered, stop = answer_in_rounds(answering(0.05), 24, order, checks, rounds=())  # --rounds none
    assert stop is None and len(answered) == 24


def test_rounds_and_confidence_are_checked():
    from llmops.rag.candidates import CandidateError, check_confidence, parse_rounds

    assert parse_rounds("6,12") == (6, 12) and parse_rounds("none") == () and parse_rounds("") == ()
    for bad in ("12,6", "0,4", "six"):
        with pytest.raises(CandidateError, match="--rounds: "):
            parse_rounds(bad)
    with pytest.raises(CandidateError, match=r"--confidence: must be at least 0\.5 and below 1"):
        check_confidence(1.0)


def test_a_stopped_candidate_is_never_chosen():
    from llmops.gates import parse_policy
    from llmops.rag.candidates import choose_generator

    policy = parse_policy("model: rag\nmetrics:\n  rouge_l: {min: 0.15}\n")
    extractive = {"name": "extractive", "scores": {"answer_key": 0.6, "rouge_l": 0.3}}
    lucky = {"name": "base", "scores": {"answer_key": 0.9, "rouge_l": 0.3}, "stopped": "base stopped"}
    assert choose_generator([extractive, lucky], policy)[0] == 0


SCORES = Path(__file__).resolve().parents[1] / "data" / "rag_candidate_scores.json"


@pytest.mark.parametrize("corpus", ["docs", "readmes"])
def test_early_elimination_picks_the_winner_of_a_full_evaluation(corpus):
    """Full evaluations of the extractive generator and SmolLM2-135M-Instruct, per question, on the
    shipped golden set over docs/ and on tests/data/readmes_golden.yaml over tests/data/readmes/
    (in the form ``bench/rag_candidates.py --record`` writes: its index, the rag_answer prompt,
    greedy decoding): the rounds pick the same winner, and the candidate that wins is never
    stopped (the roles swapped: extractive challenging SmolLM2)."""
    from llmops.gates import parse_policy
    from llmops.rag.candidates import answer_in_rounds, answer_order, choose_generator, limits

    recorded = json.loads(SCORES.read_text())[corpus]
    policy = parse_policy((Path(__file__).resolve().parents[2] / "evals" / "rag.yaml").read_text())
    total, seed = recorded["questions"], recorded["golden"]
    found = recorded["candidates"]
    full = [{"name": name, "scores": found[name]["scores"]} for name in ("extractive", "base")]

    def rounds(challenger: str, floor: str):
        rows = found[challenger]["rows"]
        checks = limits(found[floor]["scores"], policy)
        return answer_in_rounds(lambda todo: [{"scores": rows[i]} for i in todo], total,
                                answer_order(total, seed), checks)  # fmt: skip

    answered, stop = rounds("base", "extractive")
    early = [full[0], {**full[1], "stopped": stop.sentence("base") if stop else None}]
    assert choose_generator(early, policy)[0] == choose_generator(full, policy)[0] == 0
    assert stop is not None and len(answered) < total  # it lost, and answered fewer questions
    answered, stop = rounds("extractive", "base")  # the winner as the challenger: never stopped
    assert stop is None and len(answered) == total


def test_evaluate_candidate_scores_the_floors_answers_and_stops_a_hopeless_candidate():
    """The flow's answer step (llmops.rag.candidates.evaluate_candidate) on a fake pipeline: the
    extractive floor's answers are scored, never asked again; an LLM candidate that states no key
    fact stops after its first round, with the round sizes and the limits printed."""
    from types import SimpleNamespace

    from llmops.gates import parse_policy
    from llmops.rag.candidates import evaluate_candidate
    from llmops.rag.evaluation import GoldenItem, GoldenSet
    from llmops.rag.pipeline import RagAnswer
    from llmops.rag.retriever import Hit

    facts = [f"Setting number {i} defaults to {i * 7} seconds." for i in range(24)]
    golden = GoldenSet(questions=[GoldenItem(question=f"What is the default of setting {i}?", reference=fact,
                                             reference_contexts=[fact], keys=[f"{i * 7} seconds"])
                                  for i, fact in enumerate(facts)])  # fmt: skip
    hits = [
        [Hit(id=f"c{i}", text=fact, source="docs/x.md", position=i, score=0.9)]
        for i, fact in enumerate(facts)
    ]
    asked: list[int] = []

    def pipeline(answer):
        def answer_many(questions, found, progress=None):
            asked.append(len(questions))
            return [RagAnswer(answer=answer(q), sources=[], versions={}) for q in questions]

        return SimpleNamespace(
            answer_many=answer_many, generator=SimpleNamespace(settings={"backend": "fake"})
        )

    policy = parse_policy("model: rag\nmetrics:\n  rouge_l: {min: 0.15}\n")
    floor = [RagAnswer(answer=f"{fact} [1]", sources=[], versions={}) for fact in facts]
    lines: list[str] = []
    extractive = evaluate_candidate("extractive", pipeline(lambda q: "unused"), golden, hits, 1,
                                    floor_answer_key=1.0, policy=policy, floor_answers=floor,
                                    write=lines.append)  # fmt: skip
    assert asked == [] and extractive["answered"] == 24 and extractive["stopped"] is None
    assert extractive["scores"]["answer_key"] == 1.0 and extractive["settings"] == {"backend": "fake"}
    hopeless = evaluate_candidate("base", pipeline(lambda q: "I cannot say."), golden, hits, 1,
                                  floor_answer_key=1.0, policy=policy, write=lines.append)  # fmt: skip
    assert asked == [6] and hopeless["answered"] == 6 and len(hopeless["rows"]) == 6
    assert hopeless["stop"]["round"] == 1 and hopeless["stopped"].startswith(
        "base stopped after round 1 (6/24"
    )
    assert lines[1] == (
        "base: 24 questions in rounds of 6, 12, 24; stops below extractive floor answer_key 1.000, "
        "policy min rouge_l 0.150"
    )
    asked.clear()
    everything = evaluate_candidate("base", pipeline(lambda q: "I cannot say."), golden, hits, 1,
                                    floor_answer_key=1.0, policy=policy, rounds=(),
                                    write=lines.append)  # fmt: skip
    assert asked == [24] and everything["stopped"] is None and everything["answered"] == 24
    assert "base: all 24 questions (--rounds none: no early stop)" in lines
