"""Finding 5: promote is idempotent per run. The guard lives in ``register_gated``, which the
classifier, RAG and LLM flows all promote through, so these tests cover all three; the
resume-after-kill test with a real flow is in tests/integration/test_train_flow.py."""

from __future__ import annotations

import json

from llmops.lineage import resumed_runs
from llmops.promotion import register_gated
from llmops.registry import CHAMPION, Registry


def gate(champion: str | None = None) -> dict:
    return {"passed": True, "policy_version": "p", "champion_version": champion, "rules": []}


def promote(name: str, run: str, champion: str | None = None) -> tuple[str, bool, str]:
    return register_gated(
        name,
        lambda folder: (folder / "model.txt").write_text(run),
        gate_decision=gate(champion),
        metadata={"run": run},
        labels={},
        json_files={},
    )


def test_promoting_again_for_the_same_run_registers_nothing_new(model_name):
    version, promoted, _ = promote(model_name, "SomeFlow/1")
    again, promoted_again, note = promote(model_name, "SomeFlow/1")
    assert promoted and promoted_again and again == version
    assert "earlier attempt of this run" in note
    assert [v.version for v in Registry().versions(model_name)] == [version]
    assert [e["version"] for e in Registry().history(model_name)] == [version]  # the alias moved once


def test_a_version_registered_before_a_crash_is_promoted_not_registered_again(model_name):
    registry = Registry()
    orphan = registry.register(  # what a run killed between register and promote leaves behind
        model_name,
        lambda folder: (folder / "model.txt").write_text("x"),
        metadata={"run": "SomeFlow/5", "gate_passed": True},
    )
    version, promoted, note = promote(model_name, "SomeFlow/5")
    assert (version, promoted) == (orphan.version, True)
    assert registry.aliases(model_name) == {CHAMPION: orphan.version}
    assert len(registry.versions(model_name)) == 1, note


def test_an_alias_moved_by_another_run_since_is_not_taken_back(model_name):
    first, _, _ = promote(model_name, "SomeFlow/1")
    other, promoted, _ = promote(model_name, "SomeFlow/2", champion=first)
    assert promoted
    again, promoted_again, note = promote(model_name, "SomeFlow/1")  # a late resume of run 1
    assert (again, promoted_again) == (first, True)  # it had been promoted, by this run
    assert f"moved on to {other}" in note
    assert Registry().aliases(model_name)[CHAMPION] == other  # and the alias stays where run 2 put it
    assert len(Registry().versions(model_name)) == 2


def test_a_different_run_registers_its_own_version(model_name):
    first, _, _ = promote(model_name, "SomeFlow/1")
    second, promoted, _ = promote(model_name, "SomeFlow/2", champion=first)
    assert second != first and promoted
    assert json.loads(json.dumps(Registry().get(model_name).metadata))["run"] == "SomeFlow/2"


def test_a_run_metaflow_does_not_know_is_its_own_lineage():
    assert resumed_runs("NoSuchFlow/12345") == ["NoSuchFlow/12345"]


def test_every_flow_refuses_a_failed_gate_with_the_same_note():
    from llmops.promotion import gate_refusal

    rules = [{"rule": "metrics.f1.min", "passed": False}, {"rule": "regression.f1", "passed": True},
             {"rule": "drift.max_drifted_share", "passed": False}]  # fmt: skip
    assert gate_refusal({"passed": True, "rules": rules}) is None
    assert gate_refusal({"passed": False, "rules": rules}) == (
        "not promoted: gate failed on metrics.f1.min, drift.max_drifted_share"
    )
