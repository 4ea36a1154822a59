"""Bulk upload: real files into the real stack's S3 and image_info; rejects, resume, idempotence, labels."""

from __future__ import annotations

import asyncio
import hashlib
import io
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer
from PIL import Image

from visionstream.bulk import upload as upload_module
from visionstream.bulk.upload import (
    upload,
)
from visionstream.core.db import connect, migrate
from visionstream.core.kafka_client import kafka_client_kwargs
from visionstream.core.records import parse_image_request
from visionstream.core.s3 import s3_client

from ..media import WNIDS, jpegs, write_imagenet_tree


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def settings(stack_settings):
    run(migrate(stack_settings))
    return stack_settings


@pytest.fixture
def prefix() -> str:
    return f"upload-test/{uuid.uuid4().hex[:8]}/"


async def rows_under(settings, prefix: str) -> dict[str, dict]:
    conn = await connect(settings)
    try:
        rows = await conn.fetch("SELECT * FROM image_info WHERE starts_with(image_key, $1)", prefix)
    finally:
        await conn.close()
    return {row["image_key"]: dict(row) for row in rows}


async def objects_under(settings, prefix: str) -> dict[str, bytes]:
    async with s3_client(settings) as client:
        keys = []
        async for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket, Prefix=prefix):
            keys += [obj["Key"] for obj in page.get("Contents", [])]
        objects = {}
        for key in keys:
            response = await client.get_object(Bucket=settings.s3_bucket, Key=key)
            async with response["Body"] as body:
                objects[key] = await body.read()
    return objects


async def etags_under(settings, prefix: str) -> dict[str, int | None]:
    """{key: the number of parts its ETag names (None: uploaded in one PUT)} of the objects under prefix."""
    async with s3_client(settings) as client:
        listed = await client.list_objects_v2(Bucket=settings.s3_bucket, Prefix=prefix)
        etags = {obj["Key"]: (await client.head_object(Bucket=settings.s3_bucket, Key=obj["Key"]))["ETag"]
                 for obj in listed.get("Contents", [])}
    return {key: int(etag.strip('"').split("-")[1]) if "-" in etag else None for key, etag in etags.items()}


# --- On the stack -----------------------------------------------------------------------------------------


def test_tree_and_tar_land_in_s3_and_image_info_and_bad_files_nowhere(settings, prefix, tmp_path: Path) -> None:
    tree = write_imagenet_tree(tmp_path / "imagenet")
    good, truncated = jpegs(2)
    archive = write_tar(tmp_path / "extra.tar", {
        "val/ILSVRC2012_val_00000001.JPEG": good,
        "val/corrupt.JPEG": good[:400] + bytes(reversed(good[400:])),
        "val/empty.JPEG": b"",
        "val/truncated.JPEG": truncated[: len(truncated) * 2 // 3],
        "val/notes.txt": b"not an image at all",
    })
    rejects = tmp_path / "rejects.tsv"

    summary = run(upload(settings, [tmp_path / "imagenet", archive], prefix=prefix, rejects=rejects, progress=False))

    expected = {prefix + relative: (data, wnid, "train", str(tmp_path / "imagenet"))
                for relative, (data, wnid) in tree.items()}
    expected[prefix + "val/ILSVRC2012_val_00000001.JPEG"] = (good, None, "val", str(archive))
    assert (summary.files, summary.uploaded, summary.registered, summary.rejected) == (len(tree) + 5, len(expected),
                                                                                      len(expected), 4)
    objects = run(objects_under(settings, prefix))
    assert objects == {key: data for key, (data, *_) in expected.items()}
    rows = run(rows_under(settings, prefix))
    assert set(rows) == set(expected)
    for key, (data, label, split, source) in expected.items():
        width, height = Image.open(io.BytesIO(data)).size
        row = rows[key]
        assert (row["bucket"], row["size_bytes"], row["width"], row["height"], row["format"]) == (
            settings.s3_bucket, len(data), width, height, "JPEG")
        assert (row["label"], row["split"], row["source"]) == (label, split, source)
        assert row["content_sha256"] == hashlib.sha256(data).hexdigest()

    listed = [line.split("\t") for line in rejects.read_text().splitlines()[1:]]
    assert sorted(origin for origin, _ in listed) == sorted(
        f"{archive}:val/{name}" for name in ("corrupt.JPEG", "empty.JPEG", "truncated.JPEG", "notes.txt"))
    assert dict(listed)[f"{archive}:val/empty.JPEG"] == "zero bytes"

    again = run(upload(settings, [tmp_path / "imagenet", archive], prefix=prefix, rejects=rejects, progress=False))
    assert (again.skipped, again.uploaded, again.registered, again.rejected) == (len(expected), 0, 0, 4)
    assert len(run(rows_under(settings, prefix))) == len(expected)


RESUME_FIRST, RESUME_SECOND = 5, 7  # files registered by the first (limited) run and by the interrupted one


def test_interrupted_runs_resume_without_duplicates_or_repeated_uploads(settings, prefix, tmp_path, monkeypatch):
    files = write_imagenet_tree(tmp_path / "imagenet", per_class=8)
    source = tmp_path / "imagenet"
    put_keys: list[str] = []
    gate = {"after": None, "started": 0, "done": 0, "open": None}  # the interrupted run: puts after the first N block
    original_put = upload_module.ObjectUploader.put

    async def recording_put(self, image):
        put_keys.append(image.file.key)
        if gate["after"] is not None:
            gate["started"] += 1
            if gate["started"] > gate["after"]:
                await gate["open"].wait()  # never set: the run is cancelled while these puts wait
        await original_put(self, image)
        gate["done"] += 1

    monkeypatch.setattr(upload_module.ObjectUploader, "put", recording_put)

    first = run(upload(settings, [source], prefix=prefix, limit=RESUME_FIRST, progress=False))
    assert (first.files, first.registered) == (RESUME_FIRST, RESUME_FIRST)

    async def cancelled_part_way() -> None:
        gate.update(after=RESUME_SECOND, started=0, done=0, open=asyncio.Event())
        task = asyncio.create_task(upload(settings, [source], prefix=prefix, concurrency=2, progress=False))
        expected = RESUME_FIRST + RESUME_SECOND
        deadline = asyncio.get_running_loop().time() + 30
        # Every put after the first RESUME_SECOND waits: once their rows are flushed, nothing else can land.
        while len(await rows_under(settings, prefix)) < expected:
            assert not task.done(), f"the upload ended before its puts were blocked: {task}"
            assert asyncio.get_running_loop().time() < deadline, (
                f"the interrupted run's {RESUME_SECOND} uploads were not registered within 30 s")
            await asyncio.sleep(0.05)
        assert gate["done"] == RESUME_SECOND
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancelled_part_way())
    gate["after"] = None
    registered_before = set(run(rows_under(settings, prefix)))
    assert len(registered_before) == RESUME_FIRST + RESUME_SECOND, (
        f"{len(registered_before) - RESUME_FIRST - RESUME_SECOND} files registered whose upload had not finished")
    put_keys.clear()

    final = run(upload(settings, [source], prefix=prefix, progress=False))
    assert final.skipped == len(registered_before)
    assert final.uploaded == final.registered == len(files) - len(registered_before)
    assert not registered_before & set(put_keys), "registered files were uploaded again"
    assert sorted(put_keys) == sorted({prefix + relative for relative in files} - registered_before)
    rows = run(rows_under(settings, prefix))
    assert set(rows) == {prefix + relative for relative in files}
    assert set(run(objects_under(settings, prefix))) == set(rows)


def test_object_uploaded_but_not_registered_is_uploaded_again_and_registered(settings, prefix, tmp_path) -> None:
    files = write_imagenet_tree(tmp_path / "imagenet", per_class=1)
    relative = next(iter(files))
    key = prefix + relative

    async def put_stale_object() -> None:
        async with s3_client(settings) as client:
            await client.put_object(Bucket=settings.s3_bucket, Key=key, Body=b"partial leftovers")

    run(put_stale_object())
    summary = run(upload(settings, [tmp_path / "imagenet"], prefix=prefix, progress=False))
    assert summary.registered == len(files)
    assert run(objects_under(settings, prefix))[key] == files[relative][0]


def test_validation_labels_from_ground_truth_file(settings, prefix, tmp_path: Path) -> None:
    val = tmp_path / "val"
    val.mkdir()
    truth = {}
    for index, data in enumerate(jpegs(4), start=1):
        name = f"ILSVRC2012_val_{index:08d}.JPEG"
        (val / name).write_bytes(data)
        truth[name] = WNIDS[index % len(WNIDS)]
    ground_truth = tmp_path / "val_labels.txt"
    ground_truth.write_text("".join(f"{name} {wnid}\n" for name, wnid in truth.items()))

    summary = run(upload(settings, [val], prefix=prefix, val_labels=ground_truth, progress=False))

    assert summary.registered == 4
    rows = run(rows_under(settings, prefix))
    assert {key: (row["label"], row["split"]) for key, row in rows.items()} == {
        prefix + name: (wnid, "val") for name, wnid in truth.items()}


def test_large_files_go_up_in_parts(settings, prefix, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(upload_module, "MULTIPART_THRESHOLD", 5 << 20)  # S3's smallest part size
    noise = np.random.default_rng(7).integers(0, 256, (1900, 2000, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(noise).save(png, "PNG", compress_level=0)
    assert len(png.getvalue()) > 2 * (5 << 20)  # three parts
    folder = tmp_path / "photos" / "noise"
    folder.mkdir(parents=True)
    (folder / "big.png").write_bytes(png.getvalue())
    write_tar(tmp_path / "packed.tar", {"noise/big-in-tar.png": png.getvalue()})

    summary = run(upload(settings, [tmp_path / "photos", tmp_path / "packed.tar"], prefix=prefix, progress=False))

    assert summary.registered == 2
    # A multipart object's ETag is the MD5 of its parts' MD5s followed by "-<number of parts>"; a single PUT's
    # has no suffix.
    parts = -(-len(png.getvalue()) // (5 << 20))
    assert run(etags_under(settings, prefix)) == {prefix + "noise/big.png": parts, prefix + "noise/big-in-tar.png": parts}
    objects = run(objects_under(settings, prefix))
    assert objects == {prefix + "noise/big.png": png.getvalue(), prefix + "noise/big-in-tar.png": png.getvalue()}
    rows = run(rows_under(settings, prefix))
    assert {(r["format"], r["width"], r["height"], r["label"]) for r in rows.values()} == {("PNG", 2000, 1900, "noise")}


def test_produce_sends_each_registered_key(settings, prefix, tmp_path: Path) -> None:
    topic_settings = settings.model_copy(update={"images_topic": f"upload-test-{uuid.uuid4().hex[:8]}"})
    files = write_imagenet_tree(tmp_path / "imagenet", per_class=1)

    summary = run(upload(topic_settings, [tmp_path / "imagenet"], prefix=prefix, produce=True, progress=False))
    assert summary.produced == summary.registered == len(files)

    async def consume() -> set[tuple[str, str]]:
        consumer = AIOKafkaConsumer(topic_settings.images_topic, **kafka_client_kwargs(topic_settings),
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            seen: set[tuple[str, str]] = set()
            while len(seen) < len(files):
                batches = await consumer.getmany(timeout_ms=10_000)
                assert batches, f"only {len(seen)} of {len(files)} keys arrived"
                for messages in batches.values():
                    for message in messages:
                        request = parse_image_request(message.key, message.value)
                        seen.add((request.image_key, request.bucket))
            return seen
        finally:
            await consumer.stop()

    assert run(consume()) == {(prefix + relative, settings.s3_bucket) for relative in files}
