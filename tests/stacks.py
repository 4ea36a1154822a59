"""A real local stack (Kafka-API broker, S3, PostgreSQL) on free ports, for the session and for the modules
that stop servers and so need one of their own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from visionstream.stack import LocalStack, StackPorts, free_ports


@contextlib.contextmanager
def running_stack(folder: Path) -> Iterator[LocalStack]:
    """A LocalStack under ``folder`` on free ports, up for the ``with`` block, down after it."""
    kafka, s3, postgres = free_ports(3)
    local = LocalStack(folder, StackPorts(kafka=kafka, s3=s3, postgres=postgres))
    try:
        local.up()
        yield local
    finally:
        local.down()
