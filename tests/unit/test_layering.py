"""The layout is the architecture: three pipeline packages over one core, arrows one way.

- the core (``llmops/*.py``) imports no pipeline package;
- ``tabular/``, ``rag/`` and ``llm/`` are peers: none imports another, except that ``rag/`` may
  import ``llm/`` (a RAG release answers with an LLM: a base model, a served release);
- a piece two pipelines need lives in the core (``llmops.text``, ``llmops.gates``, ...).

The ``llmops`` command (``cli.py``) is an entry point like the flows and the services: it wires
every pipeline's commands together, so it may import them all. So is the web UI (``ui/``, ``llmops
ui``), which reads every pipeline's state; nothing but the command imports it. docs/overview.md
says the same.
"""

import ast
from pathlib import Path

import llmops

ROOT = Path(llmops.__file__).parent
DOMAINS = ("tabular", "rag", "llm")
ALLOWED = {("rag", "llm")}  # (importer, imported) across pipelines
ENTRY_POINTS = {"cli.py"}
ENTRY_PACKAGES = ("ui",)  # entry points too: they may import every pipeline


def imported_modules(path: Path) -> set[str]:
    """Every ``llmops...`` module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("llmops.")}


def domain_of(module: str) -> str | None:
    part = module.split(".")[1]
    return part if part in DOMAINS else None


def imports_between(files: list[Path]) -> list[str]:
    out = []
    for path in files:
        for module in sorted(imported_modules(path)):
            if domain_of(module):
                out.append(f"{path.relative_to(ROOT)} -> {module}")
    return out


def test_no_core_module_imports_a_pipeline():
    core = [p for p in ROOT.glob("*.py") if p.name not in ENTRY_POINTS]
    assert len(core) >= 15
    assert imports_between(core) == []


def test_pipelines_are_peers_with_one_documented_direction():
    crossing = []
    for domain in DOMAINS:
        for path in sorted((ROOT / domain).rglob("*.py")):
            for module in sorted(imported_modules(path)):
                other = domain_of(module)
                if other and other != domain and (domain, other) not in ALLOWED:
                    crossing.append(f"{path.relative_to(ROOT)} -> {module}")
    assert crossing == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from llmops.rag.lexical import terms\n    import llmops.llm.types\n")
    assert imported_modules(sample) >= {"llmops.rag.lexical", "llmops.llm.types"}


def test_only_the_command_imports_the_ui_package():
    importers = []
    for path in sorted(ROOT.rglob("*.py")):
        inside = path.relative_to(ROOT).parts[0] in ENTRY_PACKAGES or path.name in ENTRY_POINTS
        if not inside and any(m.split(".")[1] in ENTRY_PACKAGES for m in imported_modules(path)):
            importers.append(str(path.relative_to(ROOT)))
    assert importers == []
