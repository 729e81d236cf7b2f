"""The documentation site builds with `mkdocs build --strict`: no broken link, no page outside the nav, no
docstring that griffe cannot parse, an API page for every public module."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]') is not installed")
pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra (mkdocstrings[python]) is not installed")
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = ("mlquant", "stats", "quantize", "tasks", "results", "study", "report", "similarity")
LATER_MODULES = ("plot", "distance", "calibration_matrix")  # pages added once the module is committed


def committed(path: Path) -> bool:
    """Whether git tracks ``path`` (in a checkout without git: whether it exists)."""
    try:
        found = subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], cwd=ROOT, capture_output=True)
    except OSError:
        return path.exists()
    return found.returncode == 0


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        cwd=config.parent, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def nav_pages(nav: list[object]) -> list[str]:
    pages: list[str] = []
    for entry in nav:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            pages += nav_pages(value) if isinstance(value, list) else [str(value)]
    return pages


def test_site_builds_strict_with_an_api_page_per_public_module(tmp_path: Path) -> None:
    result = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = nav_pages(config["nav"])
    for name in PUBLIC_MODULES + tuple(m for m in LATER_MODULES if committed(ROOT / "mlquant" / f"{m}.py")):
        assert f"api/{name}.md" in pages, f"no API page for mlquant.{name} in mkdocs.yml's nav"
        html = (tmp_path / "site" / "api" / name / "index.html").read_text(encoding="utf-8")
        assert 'class="doc doc-object' in html, f"api/{name}.md rendered no docstring"
    # The doctests render as Python code (the "Example:" sections), not as Markdown quotes.
    stats_page = (tmp_path / "site" / "api" / "stats" / "index.html").read_text(encoding="utf-8")
    assert '<span class="gp">&gt;&gt;&gt; </span>' in stats_page and "<blockquote>" not in stats_page
    for page in ("index", "concepts", "tasks", "quantizers", "statistics", "scale", "reproducibility", "cli",
                 "contributing", "design-notes", "languages"):
        assert f"{page}.md" in pages, f"docs/{page}.md is not in the nav"


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """--strict turns a link to a missing page into an error: the test above can fail."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# x\n\nSee [the missing page](missing.md).\n")
    (tmp_path / "mkdocs.yml").write_text("site_name: x\ndocs_dir: docs\nnav:\n  - index.md\n")
    result = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0 and re.search(r"missing\.md", result.stdout + result.stderr)


def test_a_docstring_griffe_cannot_read_fails_the_build(tmp_path: Path) -> None:
    """A documented parameter that the signature lacks is a griffe warning, so an error of the strict build."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# x\n\n::: badmod\n")
    (tmp_path / "badmod.py").write_text(
        'def f(a: int) -> int:\n    """Add one.\n\n    Args:\n        b: not in the signature.\n    """\n    return a + 1\n'
    )
    (tmp_path / "mkdocs.yml").write_text(
        "site_name: x\ndocs_dir: docs\nnav:\n  - index.md\nplugins:\n  - mkdocstrings:\n      handlers:\n"
        "        python:\n          paths: [.]\n"
    )
    result = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0 and "does not appear in the function signature" in result.stdout + result.stderr


def test_docstring_conventions_extension() -> None:
    """docs/griffe_examples.py: 'Example:' becomes the examples section; 'a, b: ...' one entry per name."""
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from griffe_examples import rewrite
    finally:
        sys.path.remove(str(ROOT / "docs"))
    text = "Do it.\n\nArgs:\n    a, b (int): the two.\n        More.\n    c: one.\n\nExample:\n    >>> f(1)\n"
    assert rewrite(text).splitlines() == [
        "Do it.", "", "Args:", "    a (int): the two.", "        More.", "    b (int): the two.", "        More.",
        "    c: one.", "", "Examples:", "    >>> f(1)",
    ]
    # Outside a parameter section, a line with commas and a colon is left alone.
    assert rewrite("Returns:\n    x, y: a pair.") == "Returns:\n    x, y: a pair."
