"""What a remote task needs beside its flow file, for Metaflow's code package.

Each flow is decorated with ``@package_sources(code_package_sources(__file__),
suffixes=CODE_PACKAGE_SUFFIXES)``, so a task on AWS Batch, Kubernetes, Argo or Step Functions
imports the very ``llmops`` the flow was deployed with (not whatever version the image has) and
finds the shipped data at the same relative paths as on a laptop (``datasets/…``,
``evals/rag_golden.yaml``, ``prompts/…``, ``docs/``). The image still needs the third-party
packages (torch, transformers, peft, bentoml, chromadb, …).
"""

from __future__ import annotations

from pathlib import Path

CODE_PACKAGE_SUFFIXES = [".py", ".yaml", ".jsonl", ".md"]
DATA_FOLDERS = ("datasets", "evals", "prompts", "docs")


def code_package_sources(flow_file: str) -> list[tuple[str, str]]:
    """(source, name in the package) pairs: this library, and the data folders of the checkout
    the flow file lives in (those that exist: a flow copied elsewhere packages the library only)."""
    library = Path(__file__).resolve().parent
    checkout = Path(flow_file).resolve().parent.parent
    folders = [(str(checkout / name), name) for name in DATA_FOLDERS if (checkout / name).is_dir()]
    return [(str(library), "llmops"), *folders]
