"""The HTML report rendered by a real browser (headless Chromium): structure, figures, tables, errors, overflow.

A small synthetic run folder (cell files written by ``mlquant.results.write_cell``: 3 quants x xcopa, flores_ppl x
4 languages) goes through ``mlquant report RUN --html PAGE``'s code path (``read_results`` -> ``build_report`` ->
``write_html``). Chromium then renders a copy of the page with a probe script added (the page itself has none):

* a first inline script in ``<head>`` records ``window.onerror`` / unhandled rejections into ``data-errors`` on
  ``<html>``, and the probe at the end of ``<body>`` measures ``scrollWidth`` against ``innerWidth`` and the
  computed styles of a header and a number cell into ``data-*`` attributes; ``--dump-dom`` returns the DOM after
  the scripts ran, read back here with the standard library's ``HTMLParser``. Reading facts from the DOM does not
  depend on the format of Chromium's log lines;
* in addition ``--enable-logging=stderr --v=0`` is on and any ``ERROR:CONSOLE`` or ``Uncaught`` line fails the
  test (a resource that failed to load, which ``window.onerror`` does not see); host resolution is mapped to
  nothing, so any external request would fail and show there;
* a screenshot (``--screenshot``, 1280 x 2000) is saved under the test's tmp dir and checked to be a non-trivial PNG.

Without Chromium the test fails (it does not skip) and says how to install it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

LANGS = {"en": ("Latn", 5, "Indo-European"), "sw": ("Latn", 2, "Atlantic-Congo"), "th": ("Thai", 3, "Kra-Dai"),
         "ja": ("Jpan", 5, "Japonic")}
MODEL = "google/gemma-3-270m:Q4_K_M@0123abcd"

# Injected into the copy the browser opens (the report itself has no script).
PROBE_HEAD = ("<script>window.__errors=[];window.addEventListener('error',function(e){window.__errors.push(String("
              "e.message));});window.addEventListener('unhandledrejection',function(e){window.__errors.push(String("
              "e.reason));});</script>")
PROBE_BODY = """<script>(function(){var d=document.documentElement;
var th=document.querySelector('thead th'), num=document.querySelector('td.num');
d.setAttribute('data-scroll-width', String(d.scrollWidth));
d.setAttribute('data-inner-width', String(window.innerWidth));
d.setAttribute('data-th-position', th ? getComputedStyle(th).position : 'none');
d.setAttribute('data-num-align', num ? getComputedStyle(num).textAlign : 'none');
d.setAttribute('data-errors', JSON.stringify(window.__errors));})();</script>"""


class Node:
    """An element of the rendered DOM: tag, attributes, children, text."""

    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node] = []
        self.text = ""

    def iter(self, tag: str | None = None):
        for child in self.children:
            if tag is None or child.tag == tag:
                yield child
            yield from child.iter(tag)

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)


class DomParser(HTMLParser):
    """The serialized DOM of ``--dump-dom`` (every non-void element closed) as a tree of :class:`Node`."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.node = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.node)
        self.node.children.append(node)
        if tag not in VOID:
            self.node = node

    def handle_startendtag(self, tag, attrs):
        self.node.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.node))

    def handle_endtag(self, tag):
        node = self.node
        while node.parent is not None and node.tag != tag:
            node = node.parent
        if node.parent is not None:
            self.node = node.parent

    def handle_data(self, data):
        self.node.text += data


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("the HTML report test needs Chromium (headless): apt-get install chromium")


def _cell_rows(quant: str, task: str, lang: str, scores: np.ndarray) -> list[dict]:
    script, resource, family = LANGS[lang]
    choice = task == "xcopa"
    sig = (f"mlquant:0.1.0|model:{MODEL}|quant:{quant}|backend:simulate|calib:none|task:{task}@1.0|lang:{lang}"
           "|limit:none|seed:0|torch:2.13.0|transformers:5.24.0")
    return [dict(model=MODEL, quant=quant, method=quant.split("-")[0], backend="simulate", calibration="",
                 task=task, task_version="1.0", kind="choice" if choice else "perplexity",
                 metric="accuracy" if choice else "bits_per_byte", higher_is_better=choice,
                 difficulty="easy", lang=lang, script=script, resource_class=resource, family=family,
                 item_id=f"{task}-{i}", group="", prompt=f"prompt {i}", output=f"<b>out {i}</b>", extracted="",
                 target="", score=float(s), weight=1.0, extra="{}", signature=sig) for i, s in enumerate(scores)]


def make_run(run_dir: Path, n_choice: int = 60, n_ppl: int = 20) -> Path:
    """A synthetic finished run: fp32, rtn-w8, rtn-w4 on xcopa (0/1) and flores_ppl (bits per byte) in 4 languages.

    rtn-w4 loses 40 % of the correct xcopa answers in th (a change that survives Holm); the other cells flip a few
    items either way.
    """
    from mlquant.results import cell_path, write_cell

    rng = np.random.default_rng(7)
    for lang in LANGS:
        base = (rng.random(n_choice) < 0.75).astype(float)
        bpb = rng.uniform(0.8, 1.6, n_ppl)
        write_cell(cell_path(run_dir, "fp32", "xcopa", lang), _cell_rows("fp32", "xcopa", lang, base))
        write_cell(cell_path(run_dir, "fp32", "flores_ppl", lang), _cell_rows("fp32", "flores_ppl", lang, bpb))
        for quant, flip in (("rtn-w8", 0.03), ("rtn-w4", 0.08)):
            q = np.where(rng.random(n_choice) < flip, 1 - base, base)
            if quant == "rtn-w4" and lang == "th":
                q = np.where((base == 1) & (rng.random(n_choice) < 0.4), 0.0, q)
            noise = rng.normal(0.02 if quant == "rtn-w4" else 0.0, 0.05, n_ppl)
            write_cell(cell_path(run_dir, quant, "xcopa", lang), _cell_rows(quant, "xcopa", lang, q))
            write_cell(cell_path(run_dir, quant, "flores_ppl", lang), _cell_rows(quant, "flores_ppl", lang, bpb + noise))
    return run_dir


def _png_size(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct byte values of the decompressed image data) of a PNG file."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    width, height = struct.unpack(">II", data[16:24])
    idat, pos = b"", 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


def _render(browser: str, page: Path, out: Path, *, window: str, screenshot: Path | None = None) -> tuple[str, str]:
    args = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
            "--disable-extensions", "--enable-logging=stderr", "--v=0", f"--window-size={window}",
            "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={out / 'profile'}"]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    done = subprocess.run([*args, page.as_uri()], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HOME": str(out)})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "ERROR:CONSOLE" in line or "Uncaught" in line]


def test_report_renders_in_a_real_browser(tmp_path: Path) -> None:
    browser = chromium()
    from typer.testing import CliRunner

    from mlquant.cli import app

    run_dir = make_run(tmp_path / "run")
    page = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", str(run_dir), "--html", str(page)])
    assert result.exit_code == 0, result.output
    text = page.read_text(encoding="utf-8")
    # Self-contained, no JS: no script, no external resource (SVG namespace URIs are names, not requests).
    assert "<script" not in text and not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//|url\(\s*[\"']?(?:https?:)?//|@import", text)

    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_BODY + "</body>", 1),
                      encoding="utf-8")
    dom, stderr = _render(browser, probed, tmp_path, window="1000,1400")
    assert _console_errors(stderr) == []
    parser = DomParser()
    parser.feed(dom)
    html_node = next(parser.root.iter("html"))
    assert json.loads(html_node.attrs["data-errors"]) == []
    assert int(html_node.attrs["data-scroll-width"]) <= int(html_node.attrs["data-inner-width"]), "page overflows"
    assert html_node.attrs["data-th-position"] == "sticky"
    assert html_node.attrs["data-num-align"] == "right"

    main = next(parser.root.iter("main"))
    sections = list(main.iter("section"))
    assert sections[0].attrs.get("id") == "summary", [s.attrs for s in sections[:3]]
    summary = sections[0].all_text()
    assert "rtn-w4 lowers xcopa accuracy in th by" in summary and "McNemar p" in summary and "Holm p" in summary
    assert "itself a quantized model" in summary and "Q4_K_M" in summary  # the baseline is a GGUF Q4_K_M model
    assert "could detect" in summary and "torch (run)" in summary
    assert any(d.tag == "details" for d in sections[0].iter())  # cell signatures, collapsed

    figures = list(main.iter("figure"))
    assert len(figures) >= 3
    for figure in figures:
        svgs = list(figure.iter("svg"))
        assert svgs, f"figure {figure.attrs} has no <svg>"
        assert sum(1 for p in svgs[0].iter("path") if p.attrs.get("d")) > 5, f"figure {figure.attrs} draws nothing"
        assert any(c.tag == "figcaption" and c.all_text().strip() for c in figure.iter())
    tables = list(main.iter("table"))
    assert len(tables) >= 4
    for table in tables:
        body = next(table.iter("tbody"))
        assert len([r for r in body.iter("tr")]) >= 1
    stats = next(s for s in sections if s.attrs.get("id") == "statistics")
    headers = [th.all_text() for th in next(stats.iter("thead")).iter("th")]
    assert {"change", "95 % CI", "p", "Holm p", "MDD"} <= set(headers)
    assert len(list(next(stats.iter("tbody")).iter("tr"))) == 16  # 2 quants x 2 tasks x 4 languages

    png = tmp_path / "report.png"
    _, stderr = _render(browser, page, tmp_path, window="1280,2000", screenshot=png)
    assert _console_errors(stderr) == []
    width, height, distinct = _png_size(png)
    assert (width, height) == (1280, 2000) and png.stat().st_size > 20_000 and distinct > 50
