"""One reader per setting: ``llmops.settings`` alone reads the environment, and docs/settings.md
lists exactly the ``LLMOPS_*`` names the code reads.

The source is scanned, not imported: a module that reads a variable the table does not name, or
reads the environment itself, fails here before anyone has to find it in a deployment.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmops import settings
from llmops.settings import InferenceLogSettings, SettingsError, settings_from_env

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "settings.md"
OWNER = "plugins/llmops/settings.py"
PRODUCT = ("plugins", "services", "flows", "scripts")  # the code whose settings the table lists
SCANNED = (*PRODUCT, "tests", "bench")  # the code that may not read the environment itself
ENV_ACCESS = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}
NAME = re.compile(r"LLMOPS_[A-Z0-9_]+")


def python_files(*roots: str) -> list[Path]:
    return sorted(p for root in roots for p in (REPO / root).rglob("*.py") if "__pycache__" not in p.parts)


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the string nodes that are docstrings: they mention names, they read none."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def reads_environment(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in ENV_ACCESS:
            if isinstance(node.value, ast.Name) and node.value.id == "os":
                return True
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            if ENV_ACCESS & {alias.name for alias in node.names}:
                return True
    return False


def doc_table_rows(section: str | None = None) -> list[list[str]]:
    """The body rows (cells) of the tables in docs/settings.md, or of one ``### section``'s."""
    rows, inside = [], section is None
    for line in DOCS.read_text().splitlines():
        if section is not None and line.startswith("#"):
            inside = line.lstrip("#").strip() == section
        if not (inside and line.startswith("|")):
            continue
        if set(line) <= set("|-: "):
            rows.pop()  # the row above the separator is the header
        else:
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def documented_names() -> set[str]:
    return {name for row in doc_table_rows() for name in NAME.findall(row[0])}


class SettingsModels:
    """Every pydantic model the product reads with ``settings_from_env``, and its fields."""

    def __init__(self, files: list[Path]) -> None:
        self.trees = {path: ast.parse(path.read_text(), str(path)) for path in files}
        self.classes: dict[str, list[tuple[Path, ast.ClassDef]]] = {}
        for path, tree in self.trees.items():
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    self.classes.setdefault(node.name, []).append((path, node))

    def find(self, name: str, path: Path) -> ast.ClassDef:
        candidates = self.classes.get(name, [])
        local = [node for where, node in candidates if where == path]
        if len(local) == 1:
            return local[0]
        assert len(candidates) == 1, f"{rel(path)}: cannot tell which class {name!r} is read"
        return candidates[0][1]

    def fields(self, node: ast.ClassDef, path: Path) -> set[str]:
        names = {
            stmt.target.id
            for stmt in node.body
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
        }
        for base in node.bases:
            if isinstance(base, ast.Name) and base.id in self.classes and base.id != node.name:
                names |= self.fields(self.find(base.id, path), path)
        return {name for name in names if not name.startswith("_")}

    def read_names(self) -> set[str]:
        """``LLMOPS_<FIELD>`` for every field of every model read with ``settings_from_env``."""
        found = set()
        for path, tree in self.trees.items():
            for arg, enclosing in settings_reads(tree):
                if arg == "cls":  # a classmethod reads its own class
                    assert enclosing is not None, f"{rel(path)}: settings_from_env(cls) outside a class"
                    model = enclosing
                else:
                    model = self.find(arg, path)
                found |= {f"LLMOPS_{field.upper()}" for field in self.fields(model, path)}
        return found


def settings_reads(
    node: ast.AST, enclosing: ast.ClassDef | None = None
) -> Iterator[tuple[str, ast.ClassDef | None]]:
    """(the model's name, the class around the call) for every ``settings_from_env(Model)``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Call) and child.args and isinstance(child.args[0], ast.Name):
            if (getattr(child.func, "id", None) or getattr(child.func, "attr", None)) == "settings_from_env":
                yield child.args[0].id, enclosing
        yield from settings_reads(child, child if isinstance(child, ast.ClassDef) else enclosing)


def names_the_code_reads() -> set[str]:
    files = python_files(*PRODUCT)
    constants = set()
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                if NAME.fullmatch(node.value):
                    constants.add(node.value)
    return constants | SettingsModels(files).read_names()


def test_every_setting_the_code_reads_is_in_the_table_and_every_row_is_read():
    read, documented = names_the_code_reads(), documented_names()
    assert "LLMOPS_MAX_K" in read and "LLMOPS_HOME" in read  # the scan sees fields and constants
    assert not read - documented, (
        f"read by the code, missing from docs/settings.md: {sorted(read - documented)}"
    )
    assert not documented - read, f"in docs/settings.md, read by no code: {sorted(documented - read)}"


def test_only_the_settings_module_and_the_documented_exceptions_read_the_environment():
    exceptions = [row[0].strip("`") for row in doc_table_rows("Exceptions")]
    assert exceptions, "docs/settings.md has no Exceptions table"

    def excepted(path: str) -> bool:
        return any(path == e or (e.endswith("/") and path.startswith(e)) for e in exceptions)

    readers = {rel(path) for path in python_files(*SCANNED) if reads_environment(path)}
    assert OWNER in readers  # the scan finds a read where there is one
    offenders = sorted(path for path in readers - {OWNER} if not excepted(path))
    assert not offenders, (
        f"{offenders} read the environment: use llmops.settings (value, settings_from_env) or "
        "llmops.paths, or list the module and why under Exceptions in docs/settings.md"
    )
    stale = [e for e in exceptions if not any(p == e or p.startswith(e) for p in readers)]
    assert not stale, f"docs/settings.md lists exceptions that read nothing: {stale}"


def test_an_empty_variable_counts_as_unset(monkeypatch):
    monkeypatch.setenv("LLMOPS_JUDGE_API_KEY", "")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fallback")
    assert settings.value("LLMOPS_JUDGE_API_KEY") is None
    assert settings.first_value("LLMOPS_JUDGE_API_KEY", "OPENAI_API_KEY") == "sk-fallback"
    monkeypatch.setenv("LLMOPS_JUDGE_API_KEY", "sk-own")
    assert settings.first_value("LLMOPS_JUDGE_API_KEY", "OPENAI_API_KEY") == "sk-own"


def test_a_core_group_is_read_once_with_its_default_and_a_bad_value_names_the_variable(monkeypatch, tmp_path):
    from llmops.inference_log import InferenceLogger

    monkeypatch.delenv("LLMOPS_INFERENCE_LOG_UPLOAD_S", raising=False)
    monkeypatch.setenv("LLMOPS_INFERENCE_LOG_FLUSH_S", "2.5")
    logger = InferenceLogger(tmp_path, "m")
    try:
        assert (logger.flush_interval, logger.upload_interval) == (2.5, 60.0)
    finally:
        logger.close()
    monkeypatch.setenv("LLMOPS_INFERENCE_LOG_FLUSH_S", "soon")
    with pytest.raises(SettingsError, match="LLMOPS_INFERENCE_LOG_FLUSH_S: Input should be a valid number"):
        InferenceLogger(tmp_path, "m")
    monkeypatch.setenv("LLMOPS_INFERENCE_LOG_FLUSH_S", "0")
    with pytest.raises(SettingsError, match="LLMOPS_INFERENCE_LOG_FLUSH_S: Input should be greater than 0"):
        settings_from_env(InferenceLogSettings)


def test_the_llm_batch_has_one_default_for_the_backend_and_the_service(monkeypatch):
    from llmops.llm.backends import DEFAULT_MAX_BATCH, BatchSettings

    monkeypatch.delenv("LLMOPS_LLM_MAX_BATCH", raising=False)
    assert settings_from_env(BatchSettings).llm_max_batch == DEFAULT_MAX_BATCH == 32
    monkeypatch.setenv("LLMOPS_LLM_MAX_BATCH", "0")
    with pytest.raises(
        SettingsError, match="LLMOPS_LLM_MAX_BATCH: Input should be greater than or equal to 1"
    ):
        settings_from_env(BatchSettings)
    service = ast.parse((REPO / "services" / "llm.py").read_text())
    (field,) = [
        node
        for node in ast.walk(service)
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "llm_max_batch"
    ]
    assert ast.unparse(field.value) == "Field(DEFAULT_MAX_BATCH, ge=1)"


def test_reading_settings_outside_a_service_does_not_import_bentoml():
    code = (
        "import sys\n"
        "from llmops.settings import InferenceLogSettings, settings_from_env\n"
        "settings_from_env(InferenceLogSettings)\n"
        "print('bentoml' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"
