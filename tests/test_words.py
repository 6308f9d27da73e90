"""User-facing text speaks to users: no words from how gradwatch itself was made.

Scanned: ``gradwatch --help`` and each command's help, README.md, docs/*.md, examples/*.py, and every docstring under
src/gradwatch. Flagged: references to the development material ("seed experiment", ``shared/...`` paths, "the
background texts"), to work sessions and numbered issues, and to "the project's own" history.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

INTERNAL = re.compile(
    r"seed experiment|the seed's|shared/background|\bshared/|background texts?\b|\bsessions? \d|this session|"
    r"previous session|\bissues? \d+|the project's own|of the project\b",
    re.IGNORECASE,
)


def internal_words(text: str) -> list[str]:
    """Each flagged phrase, with a little context.

    >>> internal_words("Run the seed experiment (shared/background/002), as in session 4 (issue 7).")
    ['seed experiment', 'shared/background', 'session 4', 'issue 7']
    >>> internal_words("A random seed, a shared model, issues with the optimizer.")
    []
    """
    return [m.group(0) for m in INTERNAL.finditer(text)]


def docstrings(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                out.append((getattr(node, "lineno", 1), doc))
    return out


def user_texts() -> list[tuple[str, str]]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*.py"))]
    texts = [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in files if p.exists()]
    for path in sorted((ROOT / "src" / "gradwatch").rglob("*.py")):
        texts += [(f"{path.relative_to(ROOT)}:{line}", doc) for line, doc in docstrings(path)]
    return texts


def test_the_scan_flags_planted_words() -> None:
    assert internal_words("The seed experiment, from shared/background/002.") == ["seed experiment",
                                                                                   "shared/background"]
    assert internal_words("Measured in session 4 (issue 7); the project's own history.") == [
        "session 4", "issue 7", "the project's own"]


@pytest.mark.parametrize("command", [[], ["demo"], ["report"], ["plot"]], ids=lambda c: " ".join(c) or "gradwatch")
def test_command_line_help_has_no_internal_words(command: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "gradwatch.cli", *command, "--help"], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout
    assert internal_words(out.stdout) == []


def test_docs_examples_readme_and_docstrings_have_no_internal_words() -> None:
    texts = user_texts()
    assert any(name.startswith("docs/") for name, _ in texts)
    assert any(name.startswith("examples/") for name, _ in texts)
    found = [f"{name}: {word!r}" for name, text in texts for word in internal_words(text)]
    assert found == []
