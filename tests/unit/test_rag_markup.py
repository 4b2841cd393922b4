"""The readable units of Markdown, reStructuredText and plain text (llmops.rag.markup)."""

import pytest

from llmops.rag.markup import (
    CODE,
    HEADING,
    ITEM,
    MARKUP,
    PROSE,
    TABLE,
    MarkupError,
    blocks,
    clean_text,
    is_markup_line,
    markup_kind,
    reflow,
    source_span,
)

MARKDOWN = """<p align="center"><img src="https://example.org/logo.png" alt="logo"></p>

[![Build](https://img.shields.io/badge/build-passing-green.svg)](https://ci.example.org) [![PyPI](https://img.shields.io/pypi/v/x.svg)](https://pypi.org/project/x)

# Widget

Widget is a small library whose retry behaviour can be controlled during testing by setting the
`WIDGET_RETRIES` variable to zero.

The following extras are optional:

- `socks` - SOCKS proxy support,
  installed with `widget[socks]`.
- `brotli` - decoding of brotli responses.

```python
import widget
widget.get("https://example.org")
```

| option | default |
|---|---|
| retries | 3 |

<!-- a comment -->
[Documentation](https://widget.example.org) | [Changelog](https://widget.example.org/changes)
"""

RST = """==========
Gizmo
==========

.. image:: https://img.shields.io/pypi/v/gizmo.svg
   :target: https://pypi.org/project/gizmo
   :alt: PyPI

|build| |docs|

Gizmo parses configuration files and reports every error with the line
it was found on, so that a long file is fixed in one pass.

Installation
------------

Install it with pip::

    pip install gizmo

.. code-block:: python

    import gizmo
    gizmo.load("settings.cfg")

.. note::

   Gizmo never writes to the files it
   reads.

.. |build| image:: https://ci.example.org/gizmo.svg
"""

PLAIN = """Notes on the field trip

The bus leaves at eight in the morning and
returns before six in the evening, weather
permitting.

Bring a packed lunch.
"""


def kinds(found):
    return [(b.kind, b.text) for b in found if b.kind != MARKUP]


def test_markdown_reflows_wrapped_sentences_and_keeps_units_apart():
    found = blocks(MARKDOWN, "markdown")
    units = kinds(found)
    assert (HEADING, "Widget") in units
    assert (
        PROSE,
        "Widget is a small library whose retry behaviour can be controlled during testing by "
        "setting the `WIDGET_RETRIES` variable to zero.",
    ) in units
    assert (ITEM, "`socks` - SOCKS proxy support, installed with `widget[socks]`.") in units
    assert (CODE, 'import widget\nwidget.get("https://example.org")') in units
    assert any(kind == TABLE and "retries | 3" in text for kind, text in units)
    intro = next(b for b in found if b.text == "The following extras are optional:")
    assert intro.leads_list and not any(b.leads_list for b in found if b is not intro)
    text = reflow(MARKDOWN, "markdown")
    for noise in ("<img", "<p", "[![", "shields.io", "<!--", "[Documentation]"):
        assert noise not in text


def test_rst_titles_directives_and_literal_blocks():
    found = blocks(RST, markup_kind("gizmo.rst"))
    units = kinds(found)
    assert units[0] == (HEADING, "Gizmo")  # overlined and underlined
    assert (HEADING, "Installation") in units
    assert (
        PROSE,
        "Gizmo parses configuration files and reports every error with the line it was found on, "
        "so that a long file is fixed in one pass.",
    ) in units
    assert (CODE, "pip install gizmo") in units  # after "::"
    assert (CODE, 'import gizmo\ngizmo.load("settings.cfg")') in units  # a code-block's body
    assert (PROSE, "Gizmo never writes to the files it reads.") in units  # a note's body is prose
    text = reflow(RST, "rst")
    for noise in (".. image::", ":target:", "|build|", ".. code-block::", ".. note::", "====="):
        assert noise not in text
    assert blocks(RST, "auto")[0].text == "Gizmo"  # a chunk of unknown kind: guessed as rST


def test_plain_text_paragraphs_are_reflowed():
    assert reflow(PLAIN, "text") == (
        "Notes on the field trip\n\nThe bus leaves at eight in the morning and returns before six "
        "in the evening, weather permitting.\n\nBring a packed lunch."
    )
    units = kinds(blocks(PLAIN, "text"))
    assert (
        PROSE,
        "The bus leaves at eight in the morning and returns before six in the evening, weather permitting.",
    ) in units
    assert (PROSE, "Bring a packed lunch.") in units


@pytest.mark.parametrize(
    "line",
    [
        '<img src="https://example.org/a.png" width="300">',
        "[![Build](https://img.shields.io/badge/b.svg)](https://ci.example.org)",
        "![logo](docs/logo.png)",
        "[Docs](https://example.org/docs) · [Blog](https://example.org/blog)",
        "https://github.com/example/project",
        ".. image:: https://img.shields.io/pypi/v/x.svg",
        ".. code-block:: python",
        ".. _label: https://example.org",
        "   :target: https://pypi.org/project/x",
        "|build| |coverage| |pypi|",
        "<!-- generated, do not edit -->",
        "</p>",
        "---",
        "[docs]: https://example.org/docs",
    ],
)
def test_markup_lines(line):
    assert is_markup_line(line)


@pytest.mark.parametrize(
    "line",
    [
        "Install it with pip.",
        "See the [documentation](https://example.org) for every option.",
        "| retries | 3 |",
        "- `socks` - SOCKS proxy support",
        "Use `<datastore root>/checkpoints` for the files.",
    ],
)
def test_readable_lines(line):
    assert not is_markup_line(line)


def test_clean_text_unwraps_inline_markup_and_keeps_source_offsets():
    clean, offsets = clean_text(MARKDOWN, "markdown")
    assert len(clean) == len(offsets)
    assert "setting the WIDGET_RETRIES variable" in clean  # code marks gone, lines joined
    assert "shields" not in clean and "<" not in clean and "](" not in clean
    for i, char in enumerate(clean):  # every character comes from its source offset
        assert char.isspace() or MARKDOWN[offsets[i]] == char
    start = clean.index("WIDGET_RETRIES")
    a, b = source_span(offsets, start, start + len("WIDGET_RETRIES"))
    assert MARKDOWN[a:b] == "WIDGET_RETRIES"
    span = clean.index("setting the WIDGET")
    a, b = source_span(offsets, span, span + len("setting the WIDGET_RETRIES"))
    assert MARKDOWN[a:b] == "setting the\n`WIDGET_RETRIES"  # across the source line break
    rst_clean, _ = clean_text(RST, "rst")
    assert "image::" not in rst_clean and "pip install gizmo" in rst_clean


def test_an_unknown_kind_is_refused():
    with pytest.raises(MarkupError, match="kind"):
        blocks("text", "html")
