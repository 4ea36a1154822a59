"""The local stack: real servers that start once, answer with credentials, and stop without leftovers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import uuid

import asyncpg
import boto3
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from visionstream.dev.stack import (
    LocalStack,
    StackPorts,
    free_ports,
    port_is_free,
    stack_command,
)
from visionstream.settings import load_settings


def _s3(settings, **credentials):
    return boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      signature_version=credentials.pop("signature_version", None)),
        **credentials,
    )


def test_up_again_keeps_the_running_servers(stack):
    before = {server.name: server.pid for server in stack.status()}
    stack.up()
    after = stack.status()
    assert all(server.running for server in after)
    assert {server.name: server.pid for server in after} == before
    assert stat.S_IMODE(stack.env_file.stat().st_mode) == 0o600
    assert stack.env_file.read_text() == stack.env_lines()


# Run with nothing but stack.env() in its environment: the settings and Faust configuration a worker started
# from that environment would have, and whether they reach each server of the stack.
WORKER_VIEW = """
import asyncio, json
import asyncpg
from aiokafka.admin import AIOKafkaAdminClient
from visionstream.faust_app import VisionApp
from visionstream.core.kafka_client import kafka_client_kwargs
from visionstream.core.s3 import s3_client
from visionstream.settings import load_settings

settings = load_settings()
conf = VisionApp(settings).conf

async def reach():
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        port = int(await conn.fetchval("SELECT current_setting('port')"))
    finally:
        await conn.close()
    async with s3_client(settings) as client:
        await client.head_bucket(Bucket=settings.s3_bucket)  # needs the credentials
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings))
    await admin.start()
    try:
        await admin.list_topics()
    finally:
        await admin.close()
    return port

print(json.dumps({
    "broker_url": settings.broker_url, "s3_endpoint_url": settings.s3_endpoint_url,
    "s3_access_key_id": settings.s3_access_key_id.get_secret_value(),
    "s3_secret_access_key": settings.s3_secret_access_key.get_secret_value(),
    "s3_bucket": settings.s3_bucket, "database_url": settings.database_url.get_secret_value(),
    "data_dir": str(settings.data_dir), "postgres_port": asyncio.run(reach()),
    "faust": [conf.broker_session_timeout, conf.broker_rebalance_timeout, conf.broker_heartbeat_interval,
              conf.broker_commit_interval, conf.producer_max_batch_size, conf.producer_max_request_size],
}))
"""


def test_env_names_every_setting_a_worker_needs(stack, stack_settings):
    base = {name: value for name, value in os.environ.items() if name in ("PATH", "HOME", "LANG", "TMPDIR")}
    worker = subprocess.run([sys.executable, "-c", WORKER_VIEW], env={**base, **stack.env()}, capture_output=True,
                            text=True, timeout=120)
    assert worker.returncode == 0, f"a process with only stack.env() could not reach the stack:\n{worker.stderr}"
    seen = json.loads(worker.stdout.splitlines()[-1])
    addresses = {server.name: server.address for server in stack.status()}
    assert (seen["broker_url"], seen["s3_endpoint_url"]) == (addresses["kafka"], addresses["s3"])
    # The generated PostgreSQL password is in the settings (it reached the server), never in `status`.
    password = (stack.dir / "postgres" / "password").read_text().strip()
    assert seen["database_url"] == addresses["postgres"].replace("postgres@", f"postgres:{password}@", 1)
    assert password not in addresses["postgres"]
    assert seen["postgres_port"] == int(addresses["postgres"].rsplit(":", 1)[1].split("/")[0])
    assert (seen["s3_access_key_id"], seen["s3_secret_access_key"], seen["s3_bucket"]) == (
        stack_settings.s3_access_key_id.get_secret_value(), stack_settings.s3_secret_access_key.get_secret_value(),
        stack_settings.s3_bucket)
    assert seen["data_dir"] == str(stack.data_dir)
    # Faust's tuning for the local broker reaches its configuration (timedeltas come out as seconds).
    assert seen["faust"] == [2.0, 2.0, 0.5, 0.2, 1, 16777216]


def test_env_overrides_load_as_settings(stack, monkeypatch, tmp_path):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"")
    for name in [name for name in os.environ if name.startswith("VISIONSTREAM_")]:
        monkeypatch.delenv(name)
    for name, value in stack.env(top_k=3, s3_bucket="other", model_weights=weights).items():
        monkeypatch.setenv(name, value)
    loaded = load_settings()
    assert (loaded.top_k, loaded.s3_bucket, str(loaded.model_weights)) == (3, "other", str(weights))
    monkeypatch.setenv("VISIONSTREAM_MODEL_WEIGHTS", stack.env(model_weights=None)["VISIONSTREAM_MODEL_WEIGHTS"])
    assert load_settings().model_weights is None  # None: the setting left unset
    assert stack.settings(top_k=3, s3_bucket="other").top_k == 3


def test_cli_up_prints_no_secret_but_env_does(stack, stack_settings, capsys):
    secret = stack_settings.s3_secret_access_key.get_secret_value()
    assert stack_command("up", stack_settings) == 0
    assert stack_command("status", stack_settings) == 0
    printed = capsys.readouterr().out
    assert secret not in printed and f"source {stack.env_file}" in printed
    assert stack_command("env", stack_settings) == 0
    assert f"export VISIONSTREAM_S3_SECRET_ACCESS_KEY={secret}" in capsys.readouterr().out


def test_s3_round_trip_needs_the_credentials(stack_settings):
    key = f"test-stack/{uuid.uuid4().hex}.bin"
    client = _s3(
        stack_settings,
        aws_access_key_id=stack_settings.s3_access_key_id.get_secret_value(),
        aws_secret_access_key=stack_settings.s3_secret_access_key.get_secret_value(),
    )
    client.put_object(Bucket=stack_settings.s3_bucket, Key=key, Body=b"\x00payload\xff")
    assert client.get_object(Bucket=stack_settings.s3_bucket, Key=key)["Body"].read() == b"\x00payload\xff"

    anonymous = _s3(stack_settings, signature_version=UNSIGNED)
    wrong_secret = _s3(
        stack_settings,
        aws_access_key_id=stack_settings.s3_access_key_id.get_secret_value(),
        aws_secret_access_key="not-the-secret",
    )
    for stranger in (anonymous, wrong_secret):
        with pytest.raises(ClientError) as denied:
            stranger.get_object(Bucket=stack_settings.s3_bucket, Key=key)
        assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_postgres_answers_over_tcp_on_loopback(stack_settings):
    async def query():
        conn = await asyncpg.connect(stack_settings.database_url.get_secret_value())
        try:
            return await conn.fetchrow("SELECT 1 AS one, host(inet_server_addr()) AS address")
        finally:
            await conn.close()

    row = asyncio.run(query())
    assert row["one"] == 1
    assert row["address"] == "127.0.0.1"  # NULL over a unix socket


def test_kafka_round_trip_on_an_explicit_topic(stack_settings):
    topic = f"test-stack-{uuid.uuid4().hex[:8]}"
    bootstrap = stack_settings.kafka_bootstrap

    async def round_trip():
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            sent = await producer.send_and_wait(topic, b"hello", key=b"k", partition=1)
        finally:
            await producer.stop()
        # Assigned, not subscribed: no group join, which this broker completes only after a delay.
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, 1)])
            message = await asyncio.wait_for(consumer.getone(), timeout=10)
        finally:
            await consumer.stop()
        return sent, message

    sent, message = asyncio.run(round_trip())
    assert (message.key, message.value, message.partition, message.offset) == (b"k", b"hello", 1, sent.offset)


def test_down_leaves_no_server_process(tmp_path):
    _, s3, postgres = free_ports(3)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        # The configured Kafka port is in use: the stack must pick another one.
        local = LocalStack(tmp_path, preferred_ports=StackPorts(kafka=taken, s3=s3, postgres=postgres))
        try:
            local.up()
            servers = local.status()
            settings = local.settings()
            processes = [psutil.Process(server.pid) for server in servers]
            processes += [child for p in processes for child in p.children(recursive=True)]
        finally:
            local.down()
    assert settings.kafka_bootstrap != f"127.0.0.1:{taken}"
    assert settings.s3_endpoint_url == f"http://127.0.0.1:{s3}"
    assert len(processes) > 3  # PostgreSQL's own children are checked too
    assert not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not any(server.running for server in local.status())
    assert not local.is_up()
    assert all(port_is_free(port) for port in (s3, postgres))
    local.down()  # stopping a stopped stack is fine
