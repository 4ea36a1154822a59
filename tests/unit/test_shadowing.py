"""A Python started in the repository root imports other projects' `tables` and `agents`, not the repo's folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["tables", "agents"])
def test_repo_root_folder_steps_aside_for_the_installed_package(tmp_path: Path, name: str) -> None:
    installed = tmp_path / "site" / name
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("WHO = 'the installed package'\n")
    run = subprocess.run([sys.executable, "-c", f"import {name}; print({name}.WHO, {name}.__file__)"], cwd=REPO,
                         env={"PYTHONPATH": str(tmp_path / "site")}, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("the installed package") and str(installed) in run.stdout


@pytest.mark.parametrize("name", ["tables", "agents"])
def test_without_an_installed_package_the_import_fails_as_if_the_folder_were_not_there(name: str) -> None:
    run = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1 and f"No module named '{name}'" in run.stderr


def test_the_folders_still_import_inside_the_visionstream_namespace() -> None:
    run = subprocess.run([sys.executable, "-c", "import visionstream.tables.category_counts, visionstream.agents."
                          "analyze; import visionstream.tables as t; print(t.__name__)"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "visionstream.tables", run.stderr
