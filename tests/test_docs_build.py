"""The API reference builds in strict mode (mkdocs.yml), and its pages hold the API.

Skipped where the docs packages are not installed (`make docs` installs them; they are the
`docs` extra). mkdocstrings reads the docstrings statically, so this imports no torch.
"""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_docs_build_strict(tmp_path):
    missing = [m for m in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python") if _missing(m)]
    if missing:
        pytest.skip(f"docs packages not installed ({', '.join(missing)}): make docs, or pip install '.[docs]'")
    site = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    top = (site / "api" / "asl" / "index.html").read_text()
    policies = (site / "api" / "policies" / "index.html").read_text()
    assert 'id="asl.generate"' in top and 'id="asl.load"' in top
    assert 'id="asl.policies.SelectionPolicy"' in policies and 'id="asl.policies.ASL"' in policies
    assert not (site / "results").exists()  # run outputs stay out of the site


def test_every_public_name_is_in_the_api_reference():
    """What `import asl` offers (asl.__all__) has its `:::` entry, under asl or asl.policies."""
    import asl

    pages = (ROOT / "docs" / "api" / "asl.md").read_text() + (ROOT / "docs" / "api" / "policies.md").read_text()
    documented = {line.split()[-1].rsplit(".", 1)[-1] for line in pages.splitlines() if line.startswith(":::")}
    assert sorted(set(asl.__all__) - documented) == []


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:  # a parent package is missing
        return True
