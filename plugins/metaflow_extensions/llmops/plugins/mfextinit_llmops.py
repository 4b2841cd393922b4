# Registry of the llmops Metaflow extension (read by Metaflow's extension loader).
# tests/unit/test_extension_registry.py imports every entry and checks its name.
STEP_DECORATORS_DESC = [("gate", ".gate_decorator.GateDecorator")]
# importable as `from metaflow import user_errors` (loaded with metaflow: these import no llmops at the top)
TL_PLUGINS_DESC = [
    ("user_errors", ".user_errors.user_errors"),
    ("gate_policy_parser", ".user_errors.gate_policy_parser"),
    ("training_config_parser", ".user_errors.training_config_parser"),
]
