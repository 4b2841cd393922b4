import json
import multiprocessing as mp

import pytest

from llmops.registry import CHAMPION, AliasConflict, Registry, RegistryError


def register(name, payload="x"):
    return (
        Registry()
        .register(
            name,
            lambda folder: (folder / "weights.txt").write_text(payload),
            metadata={"metrics": {"accuracy": 0.9}},
            json_files={"schema.json": {"a": 1}},
        )
        .version
    )


def test_register_get_and_lineage(model_name):
    version = register(model_name, "w1")
    found = Registry().get(model_name, version)
    assert (found.path / "weights.txt").read_text() == "w1"
    assert found.read_json("schema.json") == {"a": 1}
    assert found.metadata["metrics"] == {"accuracy": 0.9}
    with pytest.raises(RegistryError, match="has no champion yet"):
        Registry().get(model_name)


def test_promote_rollback_walks_back_through_history(model_name):
    registry = Registry()
    v1, v2, v3 = (register(model_name, p) for p in "abc")
    for v in (v1, v2, v3):
        registry.promote(model_name, v)
    assert registry.get(model_name).version == v3
    assert registry.rollback(model_name) == v2
    assert registry.rollback(model_name) == v1
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback(model_name)
    assert [e["action"] for e in registry.history(model_name)] == ["promote"] * 3 + ["rollback"] * 2


def test_compare_and_set_refuses_a_moved_alias(model_name):
    registry = Registry()
    v1, v2 = register(model_name), register(model_name)
    registry.promote(model_name, v1, expected=None)
    with pytest.raises(AliasConflict, match="moved"):
        registry.promote(model_name, v2, expected=None)
    assert registry.get(model_name).version == v1


def test_unknown_version_and_bad_names_are_refused(model_name):
    register(model_name)
    with pytest.raises(RegistryError, match="not found"):
        Registry().promote(model_name, "nope")
    with pytest.raises(RegistryError, match="not a valid model name"):
        Registry().get("../etc")
    with pytest.raises(RegistryError, match=r"version: '\.\./\.\./x' is not a version id"):
        Registry().get(model_name, "../../x")


def _promote_many(name, version, rounds):
    registry = Registry()
    for _ in range(rounds):
        registry.promote(name, version)


def test_two_processes_promoting_at_once_leave_a_valid_alias(model_name):
    v1, v2 = register(model_name, "one"), register(model_name, "two")
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_promote_many, args=(model_name, v, 40)) for v in (v1, v2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    registry = Registry()
    state = json.loads(registry._alias_file(model_name).read_text())
    assert state["aliases"][CHAMPION] in {v1, v2}
    assert len(state["history"]) == 80  # no lost update
    assert (registry.get(model_name, v1).path / "weights.txt").read_text() == "one"
    assert (registry.get(model_name, v2).path / "weights.txt").read_text() == "two"


def test_promoting_a_ref_stores_the_version_it_means_now(model_name):
    registry = Registry()
    v1 = register(model_name)
    registry.promote(model_name, "latest")
    registry.promote(model_name, "champion", alias="challenger")
    assert registry.aliases(model_name) == {"champion": v1, "challenger": v1}
    register(model_name)  # a later registration must not move either alias
    assert registry.get(model_name).version == v1
