"""`visionstream --help` (and building every subcommand's parser) loads no database, S3, Kafka or model code."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "torchvision", "asyncpg", "aioboto3", "botocore", "faust", "aiokafka", "cv2", "matplotlib")

PROBE = f"""
import contextlib, io, json, sys
from visionstream.cli.main import build_parser
with contextlib.redirect_stdout(io.StringIO()) as text, contextlib.suppress(SystemExit):
    build_parser().parse_args(["--help"])
print(json.dumps({{"help": text.getvalue(), "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def test_help_lists_every_command_without_importing_heavy_packages() -> None:
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(run.stdout)
    assert result["loaded"] == []
    for command in ("stack", "produce", "replay", "report", "upload", "errors", "retry", "enroll", "demo"):
        assert command in result["help"]
