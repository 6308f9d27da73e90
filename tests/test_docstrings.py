"""Every public name has a docstring with an example, and the API reference (docs/api.md, built) lists it.

Public names are those in the ``__all__`` of ``gradwatch`` and of its public modules. The examples themselves run as
doctests (``--doctest-modules``). Constants and type aliases cannot carry a runnable example (``doctest`` does not
collect attribute docstrings): they need an attribute docstring, which the API reference renders, and nothing more.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("gradwatch", "gradwatch.clipping", "gradwatch.lightning", "gradwatch.transformers", "gradwatch.accelerate")
CONSTANTS = {"ROOT_LAYER", "__version__", "NanOrigin", "OnNonFinite"}


def public_names() -> list[tuple[str, str]]:
    return [(mod, name) for mod in MODULES for name in importlib.import_module(mod).__all__]


@pytest.mark.parametrize(("module", "name"), public_names(), ids=lambda v: v)
def test_public_name_has_a_docstring_with_an_example(module, name):
    obj = getattr(importlib.import_module(module), name)
    if name in CONSTANTS:
        assert not inspect.isclass(obj), name
        assert not inspect.isfunction(obj), name
        assert not inspect.ismodule(obj), name
        return
    doc = inspect.getdoc(obj)
    assert doc, f"{module}.{name} needs a docstring with a >>> example"
    assert ">>>" in doc, f"{module}.{name} needs a docstring with a >>> example"


def test_constants_are_all_listed():
    assert {name for _, name in public_names()} >= CONSTANTS  # no stale exemption


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason="mkdocs and mkdocstrings-python are not installed (pip install -e .[docs])")
def test_api_reference_lists_every_public_name(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(tmp_path / "site")], capture_output=True, text=True, cwd=ROOT, check=False,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    ids = set(re.findall(r'id="([^"]+)"', (tmp_path / "site" / "api" / "index.html").read_text()))
    # A re-exported name may be rendered under its defining module (gradwatch._sinks.MemorySink for gradwatch's).
    missing = [f"{mod}.{name}" for mod, name in public_names() if not any(i.split(".")[-1] == name for i in ids)]
    assert missing == []
