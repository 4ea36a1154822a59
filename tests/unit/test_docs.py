"""The documentation site builds strictly (a broken link, a missing page or a bad anchor fails), and the
reference pages generated from the code are current."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", REPO / "docs" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", ["cli.md", "settings.md", "metrics.md", "topics.md"])
def test_generated_reference_is_current(page):
    generated = _generator().PAGES[page]()
    written = (REPO / "docs" / "reference" / page).read_text(encoding="utf-8")
    assert written == generated, f"docs/reference/{page} is stale: run .venv/bin/python docs/gen_reference.py"


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the test extra's mkdocs")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, run.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "topics" / "index.html").is_file()


def test_the_settings_page_shows_factory_defaults():
    """A field with a default_factory (the analyzer lists) shows its value, not pydantic's PydanticUndefined."""
    page = _generator().PAGES["settings.md"]()
    assert "PydanticUndefined" not in page
    row = next(line for line in page.splitlines() if line.startswith("| `VISIONSTREAM_IMAGE_ANALYZERS`"))
    assert "`classify,faces`" in row, row
