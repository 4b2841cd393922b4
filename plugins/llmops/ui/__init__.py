"""``llmops ui``: one web page over what the CLI tables and the per-run cards show apart.

An entry point like ``llmops.cli``: it reads every pipeline (the registry, the gate decisions of
Metaflow runs, the monitors' verdicts, golden sets, the running services) and no pipeline imports
it. docs/ui.md describes the pages; ``llmops.ui.app`` lists the routes.
"""
