# Registry of the llmops Metaflow extension (read by Metaflow's extension loader).
# tests/unit/test_extension_registry.py imports every entry and checks its name.
STEP_DECORATORS_DESC = [("gate", ".gate_decorator.GateDecorator")]
