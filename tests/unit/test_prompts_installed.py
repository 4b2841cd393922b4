"""From a wheel, not the editable checkout: ``pip install .`` then ``llmops prompts list`` in a
project folder lists that folder's prompts, and the installed package still imports and finds its
entry points (the gate's policy sections).

The wheel is built once from a copy of the package's sources (the checkout itself is left as it
is: a build writes ``build/`` beside its sources) and installed with ``pip install --target``, which
is put first on ``PYTHONPATH``: the child imports that ``llmops``, with no repository around it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROMPT = """\
name: greet
description: says hello to the project
input_variables: [who]
messages:
  - role: user
    content: "Say hello to {who}."
"""

pytestmark = pytest.mark.slow  # builds and installs a wheel: about ten seconds


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, **kwargs)
    assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The package installed from its wheel into a folder of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    sources = tmp / "src"
    sources.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, sources / name)
    shutil.copytree(
        REPO / "plugins", sources / "plugins", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input")
    run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(sources))
    (wheel,) = (tmp / "dist").glob("metaflow_llmops-*.whl")
    run(*pip, "install", "--no-deps", "--target", str(tmp / "site"), str(wheel))
    return tmp / "site"


@pytest.fixture
def project(tmp_path, site) -> tuple[Path, dict[str, str]]:
    """A project folder holding prompts/, and an environment that imports the installed package."""
    folder = tmp_path / "project"
    (folder / "prompts").mkdir(parents=True)
    (folder / "prompts" / "greet.yaml").write_text(PROMPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOPS_")}
    env |= {"PYTHONPATH": str(site), "LLMOPS_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    return folder, env


def test_the_installed_command_lists_the_project_folders_prompts(site, project):
    folder, env = project
    listing = run(sys.executable, str(site / "bin" / "llmops"), "prompts", "list", cwd=folder, env=env)
    assert "greet" in listing.stdout and "says hello to the project" in listing.stdout
    shown = run(sys.executable, "-m", "llmops.cli", "prompts", "show", "greet", cwd=folder, env=env)
    assert "Say hello to {who}." in shown.stdout


def test_the_installed_package_imports_from_the_wheel_and_finds_its_policy_sections(site, project):
    folder, env = project
    code = (
        "import json, llmops\n"
        "from importlib.metadata import distribution\n"
        "from llmops.gates import policy_model\n"
        "print(json.dumps({'llmops': llmops.__file__,\n"
        "    'dist': str(distribution('metaflow-llmops').locate_file('')),\n"
        "    'sections': sorted(set(policy_model().model_fields) & {'data', 'drift'})}))\n"
    )
    found = json.loads(run(sys.executable, "-c", code, cwd=folder, env=env).stdout)
    assert Path(found["llmops"]).is_relative_to(site)  # not the checkout's plugins/
    assert Path(found["dist"]) == site
    assert found["sections"] == ["data", "drift"]


def test_the_wheel_ships_the_uis_pages_and_browser_files(site):
    """``llmops ui`` works from an installed wheel, offline: its templates and vendored scripts are
    package data (pyproject.toml's ``[tool.setuptools.package-data]``)."""
    shipped = {
        p.relative_to(site / "llmops" / "ui").as_posix() for p in (site / "llmops" / "ui").rglob("*.*")
    }
    checkout = REPO / "plugins" / "llmops" / "ui"
    wanted = {
        p.relative_to(checkout).as_posix() for p in checkout.glob("*/*") if p.parent.name != "__pycache__"
    }
    assert wanted and wanted <= shipped, sorted(wanted - shipped)
