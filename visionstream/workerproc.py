"""Start and stop `faust -A visionstream worker` processes (demo, tests and benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

READY_LINE = "[^Worker]: Ready"


class WorkerProcess:
    """One Faust worker in its own process, with its log in a file."""

    def __init__(self, env: Mapping[str, str], log_path: Path, web_port: int) -> None:
        self.log_path = log_path
        self.web_port = web_port
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "visionstream", "worker", "-l", "info",
             "--web-port", str(web_port)],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_LINE in self.log_text():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log_text()[-4000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout:.0f}s:\n{self.log_text()[-4000:]}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (the worker finishes its in-flight batch), then SIGKILL if it does not exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
