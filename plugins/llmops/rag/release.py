"""A RAG release in the registry: what it takes to answer the same way again.

A release is a registry version (BentoML model store) whose files are ``release.json`` (index
version and where the index lives, embedding model and its id, chunking, corpus version,
generator settings, retrieval settings, default k), ``prompt.yaml`` (the exact prompt version,
so the release never depends on the prompts/ folder staying the same), ``eval.json`` and
``gate_decision.json``.
The index itself stays in its Chroma store; the service opens it by version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field

from llmops.prompts import PromptError, PromptTemplate, parse_prompt
from llmops.rag.index import IndexInfo
from llmops.rag.pipeline import RagPipeline
from llmops.rag.retriever import RetrievalSettings
from llmops.registry import ModelVersion

DEFAULT_RELEASE_NAME = "rag"


class RagRelease(BaseModel):
    index: IndexInfo
    chroma: str  # the store the index was evaluated in: a folder or a server URL
    embedding_model_path: str
    prompt_name: str
    prompt_version: str
    generator: dict[str, Any]  # the generator's settings (never a key)
    k: int = Field(4, ge=1)
    # releases from before hybrid retrieval were evaluated dense: they keep answering that way
    retrieval: RetrievalSettings = Field(default_factory=lambda: RetrievalSettings(mode="dense"))


def register_rag_release(
    *,
    name: str,
    release: RagRelease,
    prompt: PromptTemplate,
    scores: dict[str, float],
    evaluation: dict[str, Any],
    gate_decision: dict[str, Any],
    golden_version: str,
    run_pathspec: str,
) -> tuple[str, bool, str]:
    """Register the release and move the champion if it is still the one the gate saw.

    Returns (version, promoted, note); a failed gate decision is refused outright."""
    from llmops.promotion import register_gated

    def write(folder: Path) -> None:
        (folder / "prompt.yaml").write_text(yaml.safe_dump(prompt.model_dump(), sort_keys=False))

    return register_gated(
        name,
        write,
        gate_decision=gate_decision,
        labels={"framework": "rag"},
        metadata={
            "run": run_pathspec,
            "index_version": release.index.version,
            "corpus_version": release.index.corpus_version,
            "embedding_model": release.index.embedding_model_id,
            "prompt": f"{prompt.name}@{prompt.version}",
            "generator": release.generator.get("backend", "?"),
            "retrieval": release.retrieval.mode,
            "golden_version": golden_version,
            "metrics": scores,
        },
        json_files={"release.json": release.model_dump(mode="json"), "eval.json": evaluation},
    )


def load_release(version: ModelVersion) -> tuple[RagRelease, PromptTemplate]:
    """The release and its prompt, from a registry version."""
    release = RagRelease.model_validate(version.read_json("release.json"))
    prompt_file = version.path / "prompt.yaml"
    prompt = parse_prompt(prompt_file.read_text(), str(prompt_file))
    if prompt.version != release.prompt_version:
        raise PromptError(
            f"{version.tag}: prompt.yaml is {prompt.version}, the release says {release.prompt_version}: "
            "the stored prompt was changed; import or register the release again"
        )
    return release, prompt


def open_pipeline(
    chroma: str | None,
    index_version: str,
    prompt: str | PromptTemplate,
    generator: str,
    *,
    versions: dict[str, str] | None = None,
    retrieval: RetrievalSettings | None = None,
) -> RagPipeline:
    """A pipeline over a stored index, embedding questions with the model that built it."""
    from llmops.prompts import load_prompt
    from llmops.rag.embeddings import Embedder, EmbeddingError
    from llmops.rag.generators import make_generator
    from llmops.rag.index import chroma_client, open_index
    from llmops.rag.retriever import Retriever

    collection = open_index(chroma_client(chroma), index_version)
    meta = collection.metadata or {}
    embedder = Embedder(meta["embedding_model"])
    if embedder.model_id != meta.get("embedding_model_id"):
        raise EmbeddingError(
            f"index {index_version} was embedded with {meta.get('embedding_model_id')}, but "
            f"{meta['embedding_model']!r} is now {embedder.model_id}: rebuild the index"
        )
    template = load_prompt(prompt) if isinstance(prompt, str) else prompt
    return RagPipeline(
        Retriever(collection, embedder, retrieval),
        template,
        make_generator(generator, embedder),
        versions=versions,
    )


def score_champion(name: str, golden_version: str) -> dict[str, Any] | None:
    """``name``'s champion scores, as :func:`llmops.gates.champion_scored`, when it was evaluated
    on this very golden set (its recorded metrics then compare like with like); else None, and the
    gate falls back to the recorded metrics and says so."""
    from llmops.gates import champion_scored
    from llmops.registry import Registry

    champion = Registry().find(name)
    if champion is None or champion.metadata.get("golden_version") != golden_version:
        return None
    return champion_scored(champion.version, champion.metadata.get("metrics", {}))
