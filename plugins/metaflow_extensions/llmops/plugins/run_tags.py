"""Run tags set from inside a step: ``gate:passed``, ``model:<name>``.

A tag makes a run findable later (``Flow(...).runs("model:classifier")``) without reading its
artifacts. It needs the running task's ``current``, so it lives in the Metaflow layer, not in the
Metaflow-free core.
"""

from metaflow import Run, current


def tag_current_run(tag: str) -> None:
    """Add ``tag`` to the run this task belongs to (call it inside a step)."""
    Run(f"{current.flow_name}/{current.run_id}", _namespace_check=False).add_tag(tag)
