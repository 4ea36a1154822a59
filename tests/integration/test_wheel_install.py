"""`pip install visionstream` from the wheel a release ships, into a fresh venv, offline.

The wheel is built with `python -m build` (no isolation: the build backend is the installed setuptools, so no
download) from a copy of the working tree's files. The fresh venv gets the dependencies this venv has already
installed through a .pth file naming a folder of links to this venv's site-packages entries, visionstream's
own development install left out: nothing is downloaded, and the venv's visionstream can only come from the
wheel (`pip install --no-deps --no-index`). `pip check` then verifies the wheel's requirements against those
dependencies; its one expected complaint is facenet-pytorch's obsolete pins (installed with --no-deps, the
documented extra step: faces/detector.py's FACENET_STEP). From that venv: `faust -A visionstream worker
--help`, `visionstream --help`, and the faces analyzer's import, each from the wheel's files; then that venv's
`faust -A visionstream worker` (classify only) on the session's stack turns produced image keys into rows in
PostgreSQL and exits 0 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import sysconfig
import time
import uuid
import venv
from pathlib import Path

import pytest

from visionstream.core.db import connect
from visionstream.dev.samples import sample_images
from visionstream.dev.stack import free_port
from visionstream.dev.workerproc import LoggedProcess
from visionstream.images.producer import produce_keys

from ..media import squeezenet_weights
from .stacks import own_topics, seed_stack

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


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(fresh venv, a folder outside the repository) with the built wheel installed in the venv. --no-compile:
    the .pyc files Python then writes beside the venv's sources show which files a process imported."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(tmp)
    target = _fresh_venv(tmp)
    _run(target / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile",
         "--disable-pip-version-check", wheel)
    return target, tmp


def test_the_built_wheel_installs_offline_and_starts_a_worker(installed):
    target, tmp_path = installed
    python = target / "bin" / "python"

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


def test_the_wheel_installed_worker_turns_keys_into_rows(installed, stack, tmp_path):
    target, outside = installed
    site = next((target / "lib").glob("python3*/site-packages"))
    for cache in (site / "visionstream").rglob("__pycache__"):  # left by the other test's imports, if any
        shutil.rmtree(cache)
    name = f"wheel{uuid.uuid4().hex[:8]}"
    weights = squeezenet_weights()
    overrides = dict(app_id=name, **own_topics(name), topic_partitions=1, image_analyzers="classify",
                     frame_analyzers="", model_weights=weights, allow_random_weights=weights is None,
                     hostname=f"host-{name}", web_port=free_port(), compile_model=False)
    settings = stack.settings(**overrides)
    images = {f"{name}/{label}/{file_name}": data for label, file_name, data in sample_images(6)}
    asyncio.run(seed_stack(settings, images))

    # env -C: `python -m` puts the working directory first on the path, so it is outside the repository (whose
    # visionstream folder would win); PYTHONDONTWRITEBYTECODE cleared so imported sources leave .pyc files.
    argv = ["env", "-C", str(outside), str(target / "bin" / "python"), "-m", "faust", "-A", "visionstream", "worker",
            "-l", "info", "--web-port", str(settings.web_port)]
    env = {**stack.env(**overrides), "PYTHONDONTWRITEBYTECODE": ""}
    worker = LoggedProcess("wheel worker", argv, env, tmp_path / "worker.log")
    try:
        worker.wait_ready(timeout=180)

        async def produce_and_count() -> int:
            async def keys():
                for key in images:
                    yield key, settings.s3_bucket

            assert await produce_keys(settings, keys()) == len(images)
            conn = await connect(settings)
            try:
                deadline = time.monotonic() + 180
                while True:
                    done = await conn.fetchval("SELECT count(DISTINCT image_key) FROM prediction_results"
                                               " WHERE hostname = $1", settings.hostname)
                    if done >= len(images) or time.monotonic() > deadline or worker.process.poll() is not None:
                        return done
                    await asyncio.sleep(0.5)
            finally:
                await conn.close()

        done = asyncio.run(produce_and_count())
        assert done == len(images), f"{done} of {len(images)} keys have rows:\n{worker.log_text()[-4000:]}"
    finally:
        status = worker.stop(timeout=60)
    assert (status, worker.killed) == (0, False), worker.log_text()[-4000:]
    # The worker ran the wheel's files: the app and the classify analyzer it loaded compiled in the venv.
    compiled = {path.relative_to(site).as_posix().split(".")[0] for path in site.glob("visionstream/**/*.pyc")}
    assert {"visionstream/__pycache__/faust_app", "visionstream/classification/__pycache__/analyzer"} <= compiled, \
        sorted(compiled)

