"""The prompt registry: versioned prompt templates loaded from YAML files in the project's
``prompts/`` (where you run; ``$LLMOPS_PROMPTS_DIR`` names another folder: ``llmops.paths``).

A prompt file holds a name, a description, the input variables, the template as chat messages
(``{variable}`` placeholders) and default generation parameters. Loading checks that the
template uses exactly the declared variables. The version is a hash of the template, the
variables and the parameters, so flows record ``prompt_name`` + ``prompt_version`` and a
snapshot of every version seen is kept (``$LLMOPS_HOME/prompts``) for ``llmops prompts diff``.

Rendering treats values as data: a retrieved document containing ``{question}`` or
``{0.__class__}`` is inserted as those characters, never re-interpreted as template syntax.
"""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmops import paths
from llmops.errors import LlmopsError, parse_yaml_model


class PromptError(LlmopsError, ValueError):
    """A prompt file or a rendering request that cannot be used; names the file and the field."""


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class PromptTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    description: str = ""
    input_variables: list[str]
    messages: list[Message] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)

    @field_validator("input_variables")
    @classmethod
    def _identifiers(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not n.isidentifier()]
        if bad:
            raise ValueError(f"not identifiers: {bad}")
        return names

    @property
    def version(self) -> str:
        body = json.dumps(
            {
                "messages": [m.model_dump() for m in self.messages],
                "input_variables": self.input_variables,
                "parameters": self.parameters,
            },
            sort_keys=True,
        )
        return "prompt-" + hashlib.sha256(body.encode()).hexdigest()[:12]

    def used_variables(self) -> set[str]:
        return {name for m in self.messages for name in _placeholders(m.content)}

    def render(self, **values: Any) -> list[dict[str, str]]:
        """Chat messages with the values inserted verbatim; missing or unknown variables are errors."""
        missing = sorted(set(self.input_variables) - set(values))
        unknown = sorted(set(values) - set(self.input_variables))
        if missing:
            raise PromptError(f"prompt {self.name!r}: missing variable(s) {missing}")
        if unknown:
            raise PromptError(f"prompt {self.name!r}: undeclared variable(s) {unknown}")
        return [{"role": m.role, "content": _substitute(m.content, values)} for m in self.messages]

    def to_langchain(self):
        """The same template as a LangChain ``ChatPromptTemplate`` (needs langchain-core)."""
        from langchain_core.prompts import ChatPromptTemplate

        roles = {"system": "system", "user": "human", "assistant": "ai"}
        return ChatPromptTemplate.from_messages([(roles[m.role], m.content) for m in self.messages])


def _placeholders(text: str) -> list[str]:
    names = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise PromptError(f"{exc} (write {{{{ or }}}} for a literal brace)") from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise PromptError(f"placeholder {{{field}}} must be a plain variable name like {{question}}")
        names.append(field)
    return names


def _substitute(text: str, values: dict[str, Any]) -> str:
    # one pass over the template's own literal text; values are never parsed
    out = []
    for literal, field, _, _ in string.Formatter().parse(text):
        out.append(literal)
        if field is not None:
            out.append(str(values[field]))
    return "".join(out)


def prompts_dir() -> Path:
    """The project's prompt templates (:func:`llmops.paths.prompts_dir`)."""
    return paths.prompts_dir()


def parse_prompt(text: str, source: str) -> PromptTemplate:
    prompt = parse_yaml_model(text, PromptTemplate, source, PromptError)
    try:
        used = prompt.used_variables()
    except PromptError as exc:
        raise PromptError(f"{source}: {exc}") from None
    undeclared = sorted(used - set(prompt.input_variables))
    unused = sorted(set(prompt.input_variables) - used)
    if undeclared:
        raise PromptError(f"{source}: template uses undeclared variable(s) {undeclared}")
    if unused:
        raise PromptError(f"{source}: input variable(s) {unused} not used by the template")
    return prompt


def load_prompt(name_or_path: str, root: Path | None = None) -> PromptTemplate:
    """A prompt by name (``prompts/<name>.yaml``) or by path; its snapshot is kept for diffs."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        base = (root or prompts_dir()).resolve()
        path = (base / f"{name_or_path}.yaml").resolve()
        if base not in path.parents:
            raise PromptError(f"prompt name {name_or_path!r} leaves the prompts folder")
    if not path.is_file():
        raise PromptError(f"prompt not found: {path}")
    prompt = parse_prompt(path.read_text(), str(path))
    PromptStore().save(prompt)
    return prompt


def list_prompts(root: Path | None = None) -> list[PromptTemplate]:
    return [load_prompt(str(p)) for p in sorted((root or prompts_dir()).glob("*.yaml"))]


class PromptStore:
    """Every prompt version seen, as YAML, under ``$LLMOPS_HOME/prompts/<name>/<version>.yaml``."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or paths.prompt_snapshots_dir()

    def save(self, prompt: PromptTemplate) -> Path:
        path = self.root / prompt.name / f"{prompt.version}.yaml"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(prompt.model_dump(), sort_keys=False, allow_unicode=True))
        return path

    def versions(self, name: str) -> list[str]:
        folder = self.root / name
        return sorted(p.stem for p in folder.glob("prompt-*.yaml")) if folder.is_dir() else []

    def get(self, name: str, version: str) -> PromptTemplate:
        path = self.root / name / f"{version}.yaml"
        if not version.startswith("prompt-") or not path.is_file():
            known = ", ".join(self.versions(name)) or "none"
            raise PromptError(f"prompt {name!r} has no version {version!r} (known: {known})")
        return parse_prompt(path.read_text(), str(path))
