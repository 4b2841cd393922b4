import os
import subprocess
import sys

import pytest

from llmops.prompts import PromptError, PromptStore, load_prompt, parse_prompt

GOOD = """
name: qa
description: test prompt
input_variables: [question, context]
messages:
  - {role: system, content: "Answer from the context."}
  - {role: user, content: "Context: {context}\\nQuestion: {question}"}
parameters: {temperature: 0.0}
"""


def test_shipped_prompts_load():
    prompt = load_prompt("rag_answer")
    assert prompt.input_variables == ["question", "context"]
    assert prompt.version.startswith("prompt-")


def test_rendering_keeps_retrieved_text_as_data():
    prompt = parse_prompt(GOOD, "qa.yaml")
    hostile = "ignore this {question} {0.__class__} {context!r}"
    messages = prompt.render(question="Why?", context=hostile)
    assert messages[1]["content"] == f"Context: {hostile}\nQuestion: Why?"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("[question, context]", "[question]"), r"undeclared variable\(s\) \['context'\]"),
        (GOOD.replace("[question, context]", "[question, context, tone]"), r"\['tone'\] not used"),
        (GOOD.replace("{question}", "{question.upper}"), r"must be a plain variable name"),
        (GOOD.replace("role: system", "role: robot"), r"messages\.0\.role"),
        (GOOD.replace("name: qa", "name: Q A"), r"name: String should match pattern"),
    ],
)
def test_bad_prompt_files_name_the_problem(text, message):
    with pytest.raises(PromptError, match=message):
        parse_prompt(text, "qa.yaml")


def test_render_requires_exactly_the_declared_variables():
    prompt = parse_prompt(GOOD, "qa.yaml")
    with pytest.raises(PromptError, match=r"missing variable\(s\) \['context'\]"):
        prompt.render(question="q")
    with pytest.raises(PromptError, match=r"undeclared variable\(s\) \['extra'\]"):
        prompt.render(question="q", context="c", extra="x")


def test_version_follows_template_and_parameters_only():
    base = parse_prompt(GOOD, "qa.yaml")
    assert parse_prompt(GOOD.replace("test prompt", "reworded"), "qa.yaml").version == base.version
    assert (
        parse_prompt(GOOD.replace("temperature: 0.0", "temperature: 0.7"), "qa.yaml").version != base.version
    )


def test_names_cannot_leave_the_prompts_folder(tmp_path):
    with pytest.raises(PromptError, match="leaves the prompts folder"):
        load_prompt("../evals/classifier", root=tmp_path)


def test_langchain_template_renders_the_same_text():
    pytest.importorskip("langchain_core", reason="langchain-core comes with the [rag] extra")
    prompt = parse_prompt(GOOD, "qa.yaml")
    rendered = prompt.to_langchain().format_messages(question="Why?", context="docs")
    assert [m.content for m in rendered] == [
        m["content"] for m in prompt.render(question="Why?", context="docs")
    ]


def test_cli_diff_between_two_versions(tmp_path):
    env = dict(os.environ, LLMOPS_PROMPTS_DIR=str(tmp_path), COLUMNS="200")
    (tmp_path / "qa.yaml").write_text(GOOD)
    old = load_prompt(str(tmp_path / "qa.yaml")).version
    (tmp_path / "qa.yaml").write_text(GOOD.replace("Answer from the context.", "Answer briefly."))
    new = load_prompt(str(tmp_path / "qa.yaml")).version
    assert set(PromptStore().versions("qa")) >= {old, new}

    def llmops(*args):
        return subprocess.run(
            [sys.executable, "-m", "llmops.cli", "prompts", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    diff = llmops("diff", "qa", old, "current")
    assert diff.returncode == 0
    assert (
        "-  content: Answer from the context." in diff.stdout and "+  content: Answer briefly." in diff.stdout
    )
    listing = llmops("list")
    assert listing.returncode == 0 and new in listing.stdout
    missing = llmops("diff", "qa", "prompt-000000000000", "current")
    assert missing.returncode == 2 and "has no version" in missing.stdout


def test_a_lone_brace_is_a_prompt_error_with_a_hint():
    with pytest.raises(PromptError, match=r"qa.yaml: .*Single '}'.*literal brace"):
        parse_prompt(GOOD.replace("Answer from the context.", "Answer } now."), "qa.yaml")
