"""`pip install visionstream` from the wheel a release ships, into a fresh venv, offline.

The wheel is built with `python -m build` (no isolation: the build backend is the installed setuptools, so no
download) from a copy of the working tree's files. The fresh venv gets the dependencies this venv has already
installed through a .pth file naming a folder of links to this venv's site-packages entries, visionstream's
own development install left out: nothing is downloaded, and the venv's visionstream can only come from the
wheel (`pip install --no-deps --no-index`). `pip check` then verifies the wheel's requirements against those
dependencies; its one expected complaint is facenet-pytorch's obsolete pins (installed with --no-deps, the
documented extra step: faces/detector.py's FACENET_STEP). From that venv: `faust -A visionstream worker
--help`, `visionstream --help`, and the faces analyzer's import, each from the wheel's files.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

pytest.importorskip("build", reason="the test extra's build")

REPO = Path(__file__).resolve().parents[2]
# Entries of this venv's site-packages the fresh venv must not see: the development install of visionstream.
OWN = ("visionstream", "__editable__", "__editable___visionstream")


def _run(*command: str | Path, cwd: Path | None = None, timeout: float = 300) -> str:
    done = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _build_wheel(tmp: Path) -> Path:
    source = tmp / "source"
    files = _run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=REPO).split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    _run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", tmp / "dist", source, timeout=600)
    (wheel,) = (tmp / "dist").glob("visionstream-*.whl")
    return wheel


def _fresh_venv(tmp: Path) -> Path:
    target = tmp / "venv"
    venv.create(target, with_pip=True)  # ensurepip's bundled pip: no download
    links = tmp / "dependencies"
    links.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(OWN) and entry.suffix != ".pth":
            (links / entry.name).symlink_to(entry)
    (site,) = (target / "lib").glob("python3*/site-packages")
    (site / "dependencies.pth").write_text(f"{links}\n")
    # ensurepip's setuptools (65.5 with Python 3.11) would shadow the installed one torch requires (>=77)
    _run(target / "bin" / "python", "-m", "pip", "uninstall", "-y", "--disable-pip-version-check", "setuptools")
    return target


def test_the_built_wheel_installs_offline_and_starts_a_worker(tmp_path):
    wheel = _build_wheel(tmp_path)
    target = _fresh_venv(tmp_path)
    python = target / "bin" / "python"
    _run(python, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", wheel)

    check = subprocess.run([python, "-m", "pip", "check", "--disable-pip-version-check"],
                           capture_output=True, text=True, timeout=300)
    problems = [line for line in check.stdout.splitlines() if line.strip()]
    assert problems, "pip check found facenet-pytorch's pins satisfied: the extra step may be dropped"
    assert not [p for p in problems if not p.startswith("facenet-pytorch ")], problems
    print(f"\npip check: {len(problems)} complaint(s), all facenet-pytorch's own pins:", *problems, sep="\n  ")

    # Run from the temporary folder: from the repository, `python -c` would import its visionstream folder.
    installed = _run(python, "-c", """
import importlib.metadata, importlib.resources, visionstream, visionstream.faces.analyzer as faces
print(visionstream.__file__)
print(faces.__file__)
from visionstream.core.analyzers import analyzer_builder
names = sorted(ep.name for ep in importlib.metadata.entry_points(group="visionstream.analyzers"))
# Each entry point resolves to its builder in the wheel's files (the names alone would pass a broken wheel).
assert all(callable(analyzer_builder(name)) for name in names), names
print(names)
print(importlib.metadata.version("visionstream"))
files = importlib.resources.files
print(sorted(p.name for p in files("visionstream.schemas").iterdir() if p.name.endswith(".json")))
print(len([p for p in files("visionstream.migrations").iterdir() if p.name.endswith(".sql")]))
print(files("visionstream.dashboard").joinpath("static").is_dir())
""", cwd=tmp_path).splitlines()
    site = str(next((target / "lib").glob("python3*/site-packages")))
    assert installed[0].startswith(site) and installed[1].startswith(site), installed  # the wheel's, not the repo's
    assert installed[2] == str(["classify", "faces", "torchvision"]), installed
    schemas = sorted(p.name for p in (REPO / "visionstream" / "schemas").glob("*.json"))
    assert installed[4] == str(schemas), installed
    assert int(installed[5]) == len(list((REPO / "migrations").glob("*.sql"))), installed
    assert installed[6] == "True", installed

    worker_help = _run(python, "-m", "faust", "-A", "visionstream", "worker", "--help", cwd=tmp_path)
    assert "--web-port" in worker_help, worker_help[-2000:]
    assert "usage" in _run(target / "bin" / "visionstream", "--help", cwd=tmp_path).lower()
