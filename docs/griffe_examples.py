"""A griffe extension for the API reference: it reads two conventions of mlquant's docstrings as griffe expects.

* Doctests are titled ``Example:`` (singular). Griffe's Google parser knows only ``Examples:`` as the examples
  section; ``Example:`` would become a plain admonition whose ``>>>`` lines render as Markdown quotes. The title is
  renamed before the docstring is parsed, so every example is shown as Python code.
* Parameters (or attributes) that share a description are listed on one line, ``a, b: the two models``. Griffe
  would take ``a, b`` as one parameter name that is not in the signature (a warning, an error under ``--strict``).
  Such an entry becomes one entry per name, each with the shared description.

mkdocs.yml loads it by path (``extensions: [docs/griffe_examples.py]``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$")
_NAMED_SECTION = re.compile(
    r"^(\s*)(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|Other Parameters|Attributes):\s*$"
)
_SHARED = re.compile(r"^(\s+)(\w+(?:,\s*\w+)+)(\s*\([^)]*\))?:(.*)$")


def rewrite(text: str) -> str:
    """The docstring ``text`` with ``Example:`` titles renamed and shared parameter entries split.

    Example:
        >>> print(rewrite("Args:\\n    a, b: two models.\\n        Same tokenizer.\\nExample:\\n    x = 1"))
        Args:
            a: two models.
                Same tokenizer.
            b: two models.
                Same tokenizer.
        Examples:
            x = 1
    """
    lines = text.splitlines()
    out: list[str] = []
    section_indent: int | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        if section_indent is not None and line.strip() and indent <= section_indent:
            section_indent = None
        named = _NAMED_SECTION.match(line)
        if named:
            section_indent = len(named.group(1))
        shared = _SHARED.match(line)
        if shared and section_indent is not None and len(shared.group(1)) > section_indent:
            more = i + 1
            while more < len(lines) and (not lines[more].strip() or len(lines[more]) - len(lines[more].lstrip()) > indent):
                more += 1
            while more > i + 1 and not lines[more - 1].strip():
                more -= 1
            for name in shared.group(2).split(","):
                out.append(f"{shared.group(1)}{name.strip()}{shared.group(3) or ''}:{shared.group(4)}")
                out.extend(lines[i + 1 : more])
            i = more
            continue
        out.append(_EXAMPLE.sub(r"\1Examples:", line))
        i += 1
    return "\n".join(out)


class DocstringConventions(griffe.Extension):
    """Apply :func:`rewrite` to every docstring griffe loads, before it is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
