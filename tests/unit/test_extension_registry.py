"""Every plugin the extension registers must import and carry the name it is registered under."""

import importlib

import metaflow
from metaflow.plugins.cards.card_modules.card import MetaflowCard


def test_step_decorators_import_with_their_names():
    from metaflow_extensions.llmops.plugins import mfextinit_llmops as registry

    assert registry.STEP_DECORATORS_DESC
    for name, path in registry.STEP_DECORATORS_DESC:
        module_path, _, class_name = path.rpartition(".")
        module = importlib.import_module(module_path, "metaflow_extensions.llmops.plugins")
        assert getattr(module, class_name).name == name


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
        "llmops_llm_eval",
    }
    assert all(issubclass(card, MetaflowCard) for card in llmops_cards.CARDS)


def test_metaflow_exposes_the_decorator_and_cards():
    from metaflow.plugins import CARDS

    assert callable(metaflow.gate)
    assert {"llmops_gate", "llmops_eval", "llmops_data_profile"} <= {c.type for c in CARDS}
