"""`pip install visionstream` cannot bring facenet-pytorch (its 2.6.0 pins torch<2.3 and numpy<2): without it
the package and the app still import, and assembling the faces analyzer fails naming the extra step."""

from __future__ import annotations

import subprocess
import sys

from visionstream.faces.detector import FACENET_STEP

WITHOUT_FACENET = """
import sys
sys.modules["facenet_pytorch"] = None  # its import raises ModuleNotFoundError, as where it is not installed
import visionstream.faust_app, visionstream.cli.main
from visionstream.core.analyzers import build_analyzers
from visionstream.settings import Settings
try:
    build_analyzers(["faces"], Settings(image_analyzers="faces", frame_analyzers=""))
except ModuleNotFoundError as exc:
    print(exc)
else:
    print("built")
"""


def test_assembling_faces_without_facenet_names_the_extra_step():
    run = subprocess.run([sys.executable, "-c", WITHOUT_FACENET], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"run `{FACENET_STEP}`" in run.stdout, run.stdout
