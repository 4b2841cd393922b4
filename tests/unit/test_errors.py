"""One error base: every error llmops raises for a user to fix is an LlmopsError, which the CLI
shows as one line."""

import importlib
import inspect
import pkgutil

import llmops
from llmops.cli import main
from llmops.errors import LlmopsError

# raised on purpose by a test hook, or turned into an HTTP answer inside a service: never shown by the CLI
NOT_USER_ERRORS = {"InjectedFailure", "ApiError", "ServerError"}
HEAVY = ("llmops.llm.vllm_backend",)  # imports vLLM when present


def error_classes():
    for info in pkgutil.walk_packages(llmops.__path__, "llmops."):
        if info.name in HEAVY:
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, Exception)
                and value.__module__ == info.name
                and name not in NOT_USER_ERRORS
            ):
                yield value


def test_every_llmops_error_is_an_llmops_error():
    found = list(error_classes())
    assert len(found) >= 15
    strays = [f"{c.__module__}.{c.__name__}" for c in found if not issubclass(c, LlmopsError)]
    assert strays == []


def test_the_cli_shows_any_llmops_error_as_one_line(capsys, tmp_path):
    assert main(["prompts", "show", "../../etc/passwd"]) == 2  # a PromptError
    assert main(["index", "import", str(tmp_path / "nothing-here")]) == 2  # an index error
    out = capsys.readouterr().out
    assert out.count("error:") == 2 and "Traceback" not in out
