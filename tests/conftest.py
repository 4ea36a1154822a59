"""Shared fixtures: one real local stack (Kafka-API broker, S3, PostgreSQL) for the whole test session."""

from __future__ import annotations

import pytest

from visionstream.settings import Settings
from visionstream.stack import LocalStack, StackPorts, free_ports


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """A running LocalStack on free ports under a temporary folder, stopped at the end of the session."""
    kafka, s3, postgres = free_ports(3)
    local = LocalStack(tmp_path_factory.mktemp("visionstream"), StackPorts(kafka=kafka, s3=s3, postgres=postgres))
    try:
        local.up()
        yield local
    finally:
        local.down()


@pytest.fixture(scope="session")
def stack_settings(stack: LocalStack) -> Settings:
    return stack.settings()
