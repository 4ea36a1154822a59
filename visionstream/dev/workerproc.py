"""Start and stop `faust -A visionstream worker` processes (demo, tests and benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

READY_LINE = "[^Worker]: Ready"


class LoggedProcess:
    """A long-running child process in its own process group, with its log in a file; ready once
    ``ready_line`` appears in that log."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path,
                 ready_line: str = READY_LINE) -> None:
        self.name = name
        self.log_path = log_path
        self.ready_line = ready_line
        self.killed: bool | None = None  # set by stop(): whether it had to SIGKILL
        self.stop_seconds: float | None = None  # set by stop(): SIGTERM to exit
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            list(argv),
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_text(self, since: int = 0) -> str:
        """The log, or only what was written after ``since`` (a ``log_mark()``)."""
        with self.log_path.open("rb") as log:
            log.seek(since)
            return log.read().decode(errors="replace")

    def log_mark(self) -> int:
        """Where the log ends now: ``log_text(since=mark)`` is then what was written after this call."""
        return self.log_path.stat().st_size

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_line in self.log_text():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_text()[-4000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_text()[-4000:]}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (a worker finishes its in-flight batch), then SIGKILL to the group if it does not exit
        within ``timeout`` seconds. Returns the exit status; ``killed`` says whether the SIGKILL was needed and
        ``stop_seconds`` how long the process took to exit after the SIGTERM."""
        if self.process.poll() is None:
            signalled_at = time.monotonic()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
                self.killed = False
            except subprocess.TimeoutExpired:
                self.kill()
                self.killed = True
            self.stop_seconds = time.monotonic() - signalled_at
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def faust_worker_argv(app: Sequence[str], web_port: int) -> list[str]:
    """The command line of a Faust worker: ``app`` is how Python starts the app (a script, or -m faust -A)."""
    return [sys.executable, *app, "worker", "-l", "info", "--web-port", str(web_port)]


class WorkerProcess(LoggedProcess):
    """One visionstream Faust worker in its own process."""

    def __init__(self, env: Mapping[str, str], log_path: Path, web_port: int) -> None:
        super().__init__("worker", faust_worker_argv(["-m", "faust", "-A", "visionstream"], web_port), env, log_path)
        self.web_port = web_port
