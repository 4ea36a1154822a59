"""The local stack: real servers that start once, answer with credentials, and stop without leftovers."""

from __future__ import annotations

import asyncio
import socket
import stat
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

from visionstream.stack import LocalStack, StackPorts, free_ports, port_is_free, stack_command


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


def test_env_names_every_setting_a_worker_needs(stack, stack_settings):
    env = stack.env()
    assert env["VISIONSTREAM_BROKER_URL"] == stack_settings.broker_url
    assert env["VISIONSTREAM_S3_ENDPOINT_URL"] == stack_settings.s3_endpoint_url
    assert env["VISIONSTREAM_S3_SECRET_ACCESS_KEY"] == stack_settings.s3_secret_access_key.get_secret_value()
    assert env["VISIONSTREAM_DATABASE_URL"].startswith("postgresql://postgres@127.0.0.1:")
    assert env["VISIONSTREAM_DATA_DIR"] == str(stack.data_dir)
    assert env["BROKER_SESSION_TIMEOUT"] == "2" and env["PRODUCER_MAX_BATCH_SIZE"] == "1"
    assert stack.settings(top_k=3, s3_bucket="other").top_k == 3
    overridden = stack.env(top_k=3, s3_bucket="other", model_weights=None)
    assert overridden["VISIONSTREAM_TOP_K"] == "3" and overridden["VISIONSTREAM_S3_BUCKET"] == "other"
    assert overridden["VISIONSTREAM_MODEL_WEIGHTS"] == ""  # None: the setting left unset


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
