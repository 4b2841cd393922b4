"""One error base: every error llmops raises for a user to fix is an LlmopsError, which the CLI
shows as one line."""

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import llmops
from llmops.cli import main
from llmops.errors import LlmopsError

# raised on purpose by a test hook, or turned into an HTTP answer inside a service: never shown by the CLI
NOT_USER_ERRORS = {"InjectedFailure", "ApiError", "ServerError"}
HEAVY = ("llmops.llm.vllm_backend",)  # imports vLLM when present
ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("plugins", "flows", "services", "scripts")
VALIDATOR_DECORATORS = {"field_validator", "model_validator"}
VALIDATOR_WRAPPERS = {"AfterValidator", "BeforeValidator", "PlainValidator", "WrapValidator"}
PROGRAMMING_ERROR = re.compile(r"#\s*programming error:\s*\S")


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


def _name(node: ast.AST) -> str | None:
    """``f`` for ``f``, ``m.f`` and ``f(...)``."""
    if isinstance(node, ast.Call):
        return _name(node.func)
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else None


def _pydantic_validators(tree: ast.Module) -> set[str]:
    """Functions pydantic calls while validating (a ValueError there becomes a field error): decorated
    validators, ``model_post_init``, functions handed to ``AfterValidator`` & co (also through
    ``partial``), and the module's functions those call."""
    functions = {f.name: f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
    found = {
        f.name
        for f in functions.values()
        if f.name == "model_post_init" or {_name(d) for d in f.decorator_list} & VALIDATOR_DECORATORS
    }
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and _name(call) in VALIDATOR_WRAPPERS:
            found |= {_name(n) for a in call.args for n in ast.walk(a)} & set(functions)
    helpers = {
        _name(call)
        for name in found
        for call in ast.walk(functions[name])
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
    }
    return found | (helpers & set(functions))


def bare_value_errors(source: str, filename: str = "<source>") -> list[str]:
    """``file:line`` of each ``raise ValueError(...)`` that is neither in a pydantic validator nor
    marked ``# programming error: <why>`` on its line or the line above."""
    tree = ast.parse(source)
    lines = source.splitlines()
    validators = _pydantic_validators(tree)
    found = []

    def visit(node: ast.AST, function: str | None) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        if isinstance(node, ast.Raise) and _name(node.exc) == "ValueError" and isinstance(node.exc, ast.Call):
            marked = lines[max(node.lineno - 2, 0) : node.lineno]
            if function not in validators and not any(PROGRAMMING_ERROR.search(line) for line in marked):
                found.append(f"{filename}:{node.lineno}")
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, None)
    return found


def test_the_scan_tells_user_errors_from_validators_and_programming_errors():
    source = """
from functools import partial
from pydantic import AfterValidator, BaseModel, model_validator

def _positive(field, value):
    if value <= 0:
        raise ValueError(f"{field}: give a value above 0")
    return value

Positive = AfterValidator(partial(_positive, "x"))

def _check(value):
    if value > 1:
        raise ValueError("at most 1")

class Rule(BaseModel):
    @model_validator(mode="after")
    def _fine(self):
        _check(self.x)
        raise ValueError("pydantic makes this a field error")

def pad(items, n):
    if n < 0:  # programming error: callers pass a length
        raise ValueError("n")
    return items

def load(path):
    raise ValueError(f"{path}: not a table")
"""
    user_error = source.splitlines().index('    raise ValueError(f"{path}: not a table")') + 1
    assert bare_value_errors(source) == [f"<source>:{user_error}"]


def test_user_errors_are_llmops_errors_not_bare_value_errors():
    """A ValueError a user can cause must be the module's LlmopsError subclass (one line in the CLI,
    a headline in a flow); a bare one is left only where pydantic turns it into a field error, or
    where no input reaches it (marked ``# programming error: <why>``)."""
    found = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found += bare_value_errors(path.read_text(), str(path.relative_to(ROOT)))
    assert found == []
