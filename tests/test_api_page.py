"""The API page (docs/api.md, rendered by mkdocstrings) shows no raw Sphinx roles and every example as code.

Two checks: the docstrings of everything docs/api.md renders, read with griffe (mkdocstrings' own parser, Google
style, as mkdocs.yml configures it), and, where mkdocs is installed, the built page itself. Each check is shown to
fail on a planted defect.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import pytest

griffe = pytest.importorskip("griffe")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: A Sphinx role as written in reST (``:class:`Name```, ``:py:meth:`x```): mkdocstrings shows it as raw text.
ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|exc|data|obj):`")
ROLE_TEXT = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|exc|data|obj):")


def api_targets(path: str = os.path.join(ROOT, "docs", "api.md")) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.split(":::", 1)[1].strip() for line in f if line.startswith(":::")]


def rendered(obj: Any, seen: set[str]) -> Iterator[Any]:
    """``obj`` and the public members mkdocstrings renders under it (aliases followed inside the package)."""
    if obj.path in seen:
        return
    seen.add(obj.path)
    if obj.is_alias:
        try:
            obj = obj.final_target
        except Exception:  # an alias to another package (torch, typing): not rendered as gradwatch's
            return
    yield obj
    if obj.kind.value in ("module", "class"):
        for name, member in obj.members.items():
            if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                continue
            if obj.kind.value == "module" and member.is_alias and not member.is_exported:
                continue  # an import the module does not export (not in its __all__): not rendered
            yield from rendered(member, seen)


def defects(obj: Any) -> list[str]:
    """What would render wrong in ``obj``'s docstring: raw roles, ``>>>`` outside a code section, a named return."""
    doc = obj.docstring
    if doc is None:
        return []
    found = [f"{obj.path}: Sphinx role {m.group(0)!r}" for m in ROLE.finditer(doc.value)]
    for section in doc.parsed:
        kind = section.kind.value
        if kind == "text" and re.search(r"^\s*>>>", section.value, re.M):
            found.append(f"{obj.path}: '>>>' lines outside an 'Examples:' section (rendered as a blockquote)")
        if kind == "returns":
            found += [f"{obj.path}: a Returns entry parsed as a parameter named {item.name!r} (a 'word: ...' "
                      "line)" for item in section.value if item.name]
    return found


def scan(package: str, search_path: str, targets: list[str]) -> list[str]:
    loaded = griffe.load(package, search_paths=[search_path], docstring_parser="google", resolve_aliases=True,
                         resolve_external=False)
    seen: set[str] = set()
    found: list[str] = []
    for target in targets:
        obj = loaded
        for part in target.split(".")[1:]:
            obj = obj[part]
        for member in rendered(obj, seen):
            found += defects(member)
    return found


def test_the_docstrings_the_api_page_renders_have_no_roles_and_code_examples() -> None:
    targets = api_targets()
    assert "gradwatch.watch" in targets
    assert "gradwatch.lightning.GradWatchCallback" in targets
    assert scan("gradwatch", os.path.join(ROOT, "src"), targets) == []


PLANTED = '''"""A planted module.

Uses :class:`Thing` and :func:`helper`.
"""


def helper(x):
    """Double ``x``.

    Returns:
        A: the value doubled.

    >>> helper(2)
    4
    """
    return 2 * x


def fine(x):
    """Triple ``x``.

    Returns:
        The value tripled.

    Examples:
        >>> fine(2)
        6
    """
    return 3 * x
'''


def test_the_docstring_scan_finds_planted_defects(tmp_path: Any) -> None:
    (tmp_path / "planted").mkdir()
    (tmp_path / "planted" / "__init__.py").write_text(PLANTED)
    found = scan("planted", str(tmp_path), ["planted"])
    assert "planted: Sphinx role ':class:`'" in found
    assert "planted: Sphinx role ':func:`'" in found
    assert any(f.startswith("planted.helper: '>>>' lines outside") for f in found)
    assert any("planted.helper: a Returns entry parsed as a parameter named 'A'" in f for f in found)
    assert not any(f.startswith("planted.fine") for f in found)


# ------------------------------------------------------------------------------------------------- the built page
class PageText(HTMLParser):
    """The text outside code, ``>>>`` outside code, blockquotes, and the header rows of Returns tables."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.code_depth = 0
        self.prose: list[str] = []
        self.bare_prompts = 0
        self.blockquotes = 0
        self.section = ""
        self.returns_headers: list[list[str]] = []
        self._in_th = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("code", "pre"):
            self.code_depth += 1
        elif tag == "blockquote":
            self.blockquotes += 1
        elif tag == "thead" and self.section.startswith("Returns"):
            self.returns_headers.append([])
        elif tag == "th":
            self._in_th = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("code", "pre"):
            self.code_depth -= 1
        elif tag == "th":
            self._in_th = False
        elif tag == "table":
            self.section = ""

    def handle_data(self, data: str) -> None:
        if self._in_th and self.returns_headers and self.section.startswith("Returns"):
            self.returns_headers[-1].append(data.strip())
        if self.code_depth:
            return
        if data.strip().endswith(":") and data.strip() in ("Returns:", "Raises:", "Parameters:", "Attributes:",
                                                           "Examples:", "Yields:"):
            self.section = data.strip()
        self.prose.append(data)
        self.bare_prompts += data.count(">>>")


def page_defects(html: str) -> list[str]:
    page = PageText()
    page.feed(html)
    text = " ".join(page.prose)
    found = [f"raw Sphinx role {m.group(0)!r} near {text[max(0, m.start() - 40):m.end() + 20]!r}"
             for m in ROLE_TEXT.finditer(text)]
    if page.bare_prompts:
        found.append(f"{page.bare_prompts} '>>>' outside code blocks")
    if page.blockquotes:
        found.append(f"{page.blockquotes} blockquotes (a '>>>' example rendered as quoted text)")
    found += [f"a Returns table with a Name column: {h}" for h in page.returns_headers if "Name" in h]
    return found


def test_the_page_check_finds_planted_defects() -> None:
    html = ("<p>Uses :class: <code>Thing</code>.</p><blockquote><blockquote><blockquote><p>import torch</p>"
            "</blockquote></blockquote></blockquote><p>&gt;&gt;&gt; x</p><p><span class='doc-section-title'>"
            "Returns:</span></p><table><thead><tr><th>Name</th><th>Type</th></tr></thead></table>"
            "<pre><code>&gt;&gt;&gt; fine(2)\n:class:`in code is fine`</code></pre>")
    found = page_defects(html)
    assert len(found) == 4
    assert found[0].startswith("raw Sphinx role ':class:'")
    assert page_defects("<pre><code>&gt;&gt;&gt; fine(2)</code></pre><p>No roles here.</p>") == []


@pytest.mark.skipif(shutil.which("mkdocs", path=os.path.dirname(sys.executable)) is None,
                    reason="mkdocs is not installed (pip install -e '.[dev]')")
def test_the_built_api_page_shows_no_raw_roles_and_every_example_as_code(tmp_path: Any) -> None:
    mkdocs = shutil.which("mkdocs", path=os.path.dirname(sys.executable))
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    out = subprocess.run([mkdocs, "build", "--strict", "-q", "-d", str(tmp_path / "site")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / "site" / "api" / "index.html", encoding="utf-8") as f:
        html = f.read()
    assert 'id="gradwatch.watch"' in html
    assert page_defects(html) == []
    assert "stylesheets/extra.css" in html  # code wraps; names in the parameter tables never break mid-word
