"""Every plugin the extension registers must import and carry the name it is registered under."""

import base64
import importlib
import re

import metaflow
import pytest
from metaflow.plugins.cards.card_modules.card import MetaflowCard


def test_step_decorators_import_with_their_names():
    from metaflow_extensions.llmops.plugins import mfextinit_llmops as registry

    assert registry.STEP_DECORATORS_DESC
    for name, path in registry.STEP_DECORATORS_DESC:
        module_path, _, class_name = path.rpartition(".")
        module = importlib.import_module(module_path, "metaflow_extensions.llmops.plugins")
        assert getattr(module, class_name).name == name


def test_top_level_plugins_import_under_their_names():
    from metaflow_extensions.llmops.plugins import mfextinit_llmops as registry

    assert {name for name, _ in registry.TL_PLUGINS_DESC} == {
        "user_errors",
        "gate_policy_parser",
        "training_config_parser",
    }
    for name, path in registry.TL_PLUGINS_DESC:
        module_path, _, attribute = path.rpartition(".")
        module = importlib.import_module(module_path, "metaflow_extensions.llmops.plugins")
        assert getattr(metaflow, name) is getattr(module, attribute)


def test_a_config_parser_turns_a_user_error_into_a_metaflow_headline():
    from metaflow.exception import MetaflowException

    with pytest.raises(MetaflowException, match="surprise: Extra inputs are not permitted") as raised:
        metaflow.gate_policy_parser("model: clf\nsurprise: 1\n")
    assert raised.value.headline == "PolicyError"
    assert metaflow.gate_policy_parser("model: clf\n")["model"] == "clf"


def test_card_types_are_cards_with_llmops_names():
    from metaflow_extensions.llmops.plugins.cards import llmops_cards

    types = {card.type for card in llmops_cards.CARDS}
    assert types == {
        "llmops_data_profile",
        "llmops_eval",
        "llmops_gate",
        "llmops_drift",
        "llmops_corpus",
        "llmops_rag_eval",
        "llmops_monitor",
        "llmops_llm_eval",
    }
    assert all(issubclass(card, MetaflowCard) for card in llmops_cards.CARDS)


def test_metaflow_exposes_the_decorator_and_cards():
    from metaflow.plugins import CARDS

    assert callable(metaflow.gate)
    assert {"llmops_gate", "llmops_eval", "llmops_data_profile"} <= {c.type for c in CARDS}


class _Task(dict):
    """What a card reads of a Metaflow task: ``name in task``, ``task[name].data`` and its pathspec."""

    pathspec = "Flow/1/step/1"

    def __getitem__(self, name):
        return type("Artifact", (), {"data": dict.__getitem__(self, name)})


def _card_text(card, task):
    """The component tree the rendered HTML embeds (base64 JSON), as text."""
    blobs = re.findall(r"[A-Za-z0-9+/=]{200,}", card.render(task))
    return " ".join(base64.b64decode(b).decode("utf-8", "replace") for b in blobs)


def test_cards_take_artifact_names_from_their_options():
    from metaflow_extensions.llmops.plugins.cards.llmops_cards import CARDS, GateCard

    not_applied = {"rule": "regression.f1", "value": None, "limit": 0.02, "passed": True, "applied": False,
                   "detail": "no champion yet: nothing to regress from"}  # fmt: skip
    decision = {"passed": False, "model": "clf", "policy_version": "policy-1", "rules": [not_applied]}
    renamed = GateCard(options={"gate_decision": "holdout_decision", "title": "Holdout gate"})
    text = _card_text(renamed, _Task(holdout_decision=decision))
    assert "Gate FAILED for `clf`" in text and "Holdout gate" in text
    assert "not applied" in text and "no champion yet" in text
    assert "No `gate_decision` artifact" in _card_text(GateCard(), _Task(holdout_decision=decision))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['scores'\]"):
        GateCard(options={"scores": "x"})
    for card in CARDS:  # a task without the artifacts renders, it does not raise
        assert _card_text(card(), _Task())


def test_a_gate_policy_file_is_checked_when_the_step_is_set_up(tmp_path):
    """A policy given as a path fails before any task runs, naming the step; a Config policy was
    already checked by its parser when the run started, so set-up reads nothing."""
    from metaflow_extensions.llmops.plugins.gate_decorator import GateDecorator, GateException

    missing = GateDecorator(attributes={"policy": str(tmp_path / "nope.yaml")}, statically_defined=True)
    with pytest.raises(GateException, match=r"@gate on step \*evaluate\*: .*nope.yaml"):
        missing.step_init(None, None, "evaluate", [], None, None, None)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: clf\nthresholds: {accuracy: 0.9}\n")  # not a policy field
    with pytest.raises(GateException, match=r"@gate on step \*evaluate\*: .*thresholds"):
        GateDecorator(attributes={"policy": str(bad)}, statically_defined=True).step_init(
            None, None, "evaluate", [], None, None, None
        )
    # a Config's value is not parsed again in every task and card process (its parser did it once)
    unparsed = GateDecorator(attributes={"policy": {"model": "Not A Name"}}, statically_defined=True)
    unparsed.step_init(None, None, "evaluate", [], None, None, None)
