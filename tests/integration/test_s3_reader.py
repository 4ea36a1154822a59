"""core/s3.py's ObjectReader against the local S3: objects read back, and failures answered as aiobotocore answers
them (same error code, same fault)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from botocore.exceptions import ClientError

from visionstream.core.faults import Fault
from visionstream.core.s3 import object_reader, s3_client, s3_fault


def test_reader_against_the_local_s3(stack_settings):
    settings = stack_settings
    prefix = f"reader-{uuid.uuid4().hex[:8]}/"

    async def scenario() -> None:
        async with s3_client(settings) as client, object_reader(settings) as reader:
            for key in (f"{prefix}x.jpg", f"{prefix}spaces ü+%.jpg"):
                await client.put_object(Bucket=settings.s3_bucket, Key=key, Body=key.encode() + b"\x00\xff")
                assert await reader.get(settings.s3_bucket, key) == key.encode() + b"\x00\xff"
            # The same answer as aiobotocore for every key that fails, and the same fault reading.
            for key in (f"{prefix}missing.jpg", f"{prefix}a/../b.jpg"):
                with pytest.raises(ClientError) as ours:
                    await reader.get(settings.s3_bucket, key)
                with pytest.raises(ClientError) as theirs:
                    await client.get_object(Bucket=settings.s3_bucket, Key=key)
                assert ours.value.response["Error"]["Code"] == theirs.value.response["Error"]["Code"]
                assert s3_fault(ours.value) is s3_fault(theirs.value) is Fault.BAD_MESSAGE
        wrong = settings.model_copy(update={"s3_secret_access_key": settings.s3_access_key_id})
        async with object_reader(wrong) as stranger:
            with pytest.raises(ClientError) as denied:
                await stranger.get(settings.s3_bucket, f"{prefix}x.jpg")
            assert s3_fault(denied.value) is Fault.OUTAGE  # credentials: every request fails alike

    asyncio.run(scenario())
