"""The data path's validators of untrusted input (README "Security"): allowed buckets, bounded reads, decode
limits, claim-check keys, dead-letter payloads, and what upload walks."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from botocore.exceptions import ClientError
from PIL import Image

from visionstream.bulk import upload as upload_module
from visionstream.bulk.upload import MAX_ARCHIVE_DEPTH, Naming, Rejected, iter_source_files
from visionstream.core.imaging import DecodeLimits, ImageDecodeError, decode_image, decode_memory
from visionstream.core.pipeline import AnalyzedImage, ImageOutcome, InboundMessage, parse_each
from visionstream.core.records import (
    MAX_KEY_BYTES,
    MalformedMessage,
    SourceRef,
    check_allowed_bucket,
    key_of_malformed,
    parse_image_request,
)
from visionstream.core.s3 import ObjectReader, ObjectTooLarge
from visionstream.frames.archive import check_claim_check, claim_check_key, dated_key
from visionstream.faces.records import FACES
from visionstream.frames.input import MAX_CAPTURE_AHEAD_SECONDS, SKIP_FUTURE, FrameInput, LagPolicy
from visionstream.frames.observe import frame_results
from visionstream.frames.records import Frame, frame_headers
from visionstream.metrics import REGISTRY
from visionstream.settings import SettingsError, load_settings

# --- buckets ----------------------------------------------------------------------------------------------


def test_allowed_buckets_are_the_configured_one_and_the_listed_ones(monkeypatch):
    monkeypatch.setenv("VISIONSTREAM_S3_ALLOWED_BUCKETS", " archive-2024 , photos.example ")
    settings = load_settings(s3_bucket="images")
    assert settings.allowed_buckets == {"images", "archive-2024", "photos.example"}
    assert load_settings(s3_bucket="images", s3_allowed_buckets="").allowed_buckets == {"images"}


def test_an_invalid_allowed_bucket_names_the_setting():
    with pytest.raises(SettingsError, match="VISIONSTREAM_S3_ALLOWED_BUCKETS.*Bad_Bucket"):
        load_settings(s3_allowed_buckets="ok-bucket,Bad_Bucket")


def test_a_request_naming_another_bucket_is_a_bad_message():
    allowed = frozenset({"images", "archive-2024"})
    for bucket in (None, "images", "archive-2024"):
        check_allowed_bucket(bucket, allowed)
    request = parse_image_request(b"k", b'{"image_key": "a.jpg", "bucket": "someone-elses"}')
    with pytest.raises(MalformedMessage, match="VISIONSTREAM_S3_ALLOWED_BUCKETS"):
        check_allowed_bucket(request.bucket, allowed)


# --- bounded reads ----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def reader_of(handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                    ) -> AsyncIterator[ObjectReader]:
    """An ObjectReader (1 MiB limit) of a loopback server that answers every GET with ``handler``."""
    import aiohttp

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()

    async def credentials() -> tuple[str, str, None]:
        return ("key", "secret", None)

    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            yield ObjectReader(session, f"http://127.0.0.1:{port}", "us-east-1", credentials, 1 << 20)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("content_length", [True, False])
def test_an_object_over_the_limit_is_refused_and_not_read_whole(content_length):
    """A server's Content-Length over the limit: refused unread. Without one (chunked), the read stops once
    past the limit; the server here would send 1 GiB."""
    sent = {"bytes": 0}

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        if content_length:
            response.content_length = 1 << 30
        await response.prepare(request)
        chunk = bytes(64 << 10)
        try:
            while sent["bytes"] < 1 << 30:
                await response.write(chunk)
                sent["bytes"] += len(chunk)
        except (ConnectionError, RuntimeError):
            pass
        return response

    async def scenario() -> None:
        async with reader_of(endless) as reader:
            with pytest.raises(ObjectTooLarge, match="VISIONSTREAM_S3_MAX_OBJECT_BYTES allows 1048576"):
                await reader.get("bucket", "big.jpg")

    asyncio.run(scenario())
    assert sent["bytes"] < 64 << 20  # what the server got out before the client hung up, not 1 GiB


def test_the_reader_follows_no_redirect():
    """A 3xx is an answer about the request, not a place to send the signed GET and read from."""
    hits = {"elsewhere": 0}

    async def redirect(request: web.Request) -> web.Response:
        if request.path.startswith("/elsewhere"):
            hits["elsewhere"] += 1
            return web.Response(body=b"x" * 10)
        raise web.HTTPTemporaryRedirect("/elsewhere/big.jpg")

    async def scenario() -> None:
        async with reader_of(redirect) as reader:
            with pytest.raises(ClientError, match="307"):
                await reader.get("bucket", "a.jpg")

    asyncio.run(scenario())
    assert hits["elsewhere"] == 0


# --- decoding ---------------------------------------------------------------------------------------------


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


LIMITS = DecodeLimits(max_pixels=64_000_000, max_full_decode_pixels=4_000_000, memory_bytes=64 << 20)


def test_formats_decoded_whole_have_the_stricter_pixel_limit():
    flat = Image.new("L", (2500, 2000))  # 5 MP
    with pytest.raises(ImageDecodeError, match="VISIONSTREAM_MAX_FULL_DECODE_PIXELS"):
        decode_image(_encoded(flat, "PNG"), LIMITS)
    # The same pixels as a JPEG are decoded at DCT scale: within the limits.
    assert decode_image(_encoded(flat.convert("RGB"), "JPEG"), LIMITS, [lambda w, h: (w // 8, h // 8)]).pixels.size \
        == (313, 250)


def test_a_progressive_jpeg_pays_for_its_coefficients():
    """libjpeg holds a progressive JPEG's coefficients at full size whatever the scale (an 8000x8000 one:
    190 MB of RSS at 1/8, a baseline one 7 MB): the budget counts them."""
    image = Image.new("RGB", (4000, 4000), (90, 90, 90))
    at_eighth = [lambda w, h: (w // 8, h // 8)]
    baseline = _encoded(image, "JPEG", subsampling=0)
    progressive = _encoded(image, "JPEG", progressive=True, subsampling=0)
    assert decode_image(baseline, LIMITS, at_eighth).pixels.size == (500, 500)
    with pytest.raises(ImageDecodeError, match="would take 92 MiB; VISIONSTREAM_DECODE_MEMORY_BYTES allows 64"):
        decode_image(progressive, LIMITS, at_eighth)
    with Image.open(io.BytesIO(progressive)) as opened:
        assert decode_memory(opened, 4000, 4000, 1) == 4000 * 4000 * (4 + 2 * 3)  # not drafted: full size
    subsampled = _encoded(image, "JPEG", progressive=True, subsampling=2)  # 4:2:0: chroma at a quarter
    with Image.open(io.BytesIO(subsampled)) as opened:
        opened.draft("RGB", (500, 500))
        assert decode_memory(opened, 4000, 4000, 1) == 500 * 500 * 4 + 2 * 4000 * 4000 * 3 // 2


def test_the_memory_budget_counts_every_copy_of_a_turned_image():
    palette = Image.new("P", (3000, 3000))
    with Image.open(io.BytesIO(_encoded(palette, "PNG"))) as opened:
        # The palette buffer, its RGB conversion, then the EXIF-turned copy.
        assert decode_memory(opened, 3000, 3000, 6) == 3000 * 3000 * (1 + 4 + 4)


# --- claim checks -----------------------------------------------------------------------------------------


def test_a_claim_check_names_its_own_frame_only():
    frame = Frame("cam/1", 7, 1_700_000_000.0, 64, 64, None)
    for key in (claim_check_key("cam/1", 7), dated_key(frame)):  # the producer's, and replay's
        check_claim_check(Frame("cam/1", 7, frame.captured_at, 64, 64, None, key))
    check_claim_check(frame)  # inline: no key
    for forged in ("private/secret.jpg", claim_check_key("cam/2", 7), claim_check_key("cam/1", 8),
                   "frames/cam%2F1/7.jpg/../../private/secret.jpg", dated_key(frame).replace("2023", "2022")):
        with pytest.raises(MalformedMessage, match="is not the key of camera"):
            check_claim_check(Frame("cam/1", 7, frame.captured_at, 64, 64, None, forged))


# --- capture times ----------------------------------------------------------------------------------------


def test_a_frame_captured_in_the_future_is_skipped_and_counted_in_both_modes():
    """A producer's vs-captured a day ahead would open a live-table window Faust never expires (M3)."""
    now = 1_700_000_000.0
    agent = "faces-future-test"
    record = frame_results(agent, 8)

    def sample(outcome: str, reason: str) -> float:
        return REGISTRY.get_sample_value("visionstream_messages_total",
                                         {"agent": agent, "outcome": outcome, "reason": reason}) or 0.0

    for policy in (LagPolicy(2.0), LagPolicy(None)):
        adapter = FrameInput(policy)
        messages = [InboundMessage(SourceRef("vs-frames", 0, seq), b"door", b"jpeg",
                                   frame_headers(seq, now + ahead, 4, 4))
                    for seq, ahead in enumerate((MAX_CAPTURE_AHEAD_SECONDS - 1, MAX_CAPTURE_AHEAD_SECONDS + 1,
                                                 86_400.0 * 365))]
        inputs = [adapter(message, now) for message in messages]
        assert [i.skip_reason for i in inputs] == [None, SKIP_FUTURE, SKIP_FUTURE]
        before = sample("skipped", SKIP_FUTURE), sample("result", "")
        record(messages, ImageOutcome(results=[
            AnalyzedImage(i.key, m.ref, {} if i.skip_reason else {FACES: []}, i.source, (4, 4),
                          skip_reason=i.skip_reason) for i, m in zip(inputs, messages, strict=True)],
            computed_at=now))
        assert (sample("skipped", SKIP_FUTURE) - before[0], sample("result", "") - before[1]) == (2, 1)


# --- dead letters -----------------------------------------------------------------------------------------


def _refuse(message: InboundMessage) -> object:
    raise MalformedMessage("no")


def test_a_dead_letter_keeps_only_what_it_is_allowed_to_of_the_value():
    ref = SourceRef("t", 0, 1)
    big = InboundMessage(ref, b"k" * 100_000, b"\xff\xd8" + bytes(500_000))
    small = InboundMessage(ref, b"k", b"{}")
    for kept, payloads in ((0, [None, None]), (8192, [big.value[:8192], b"{}"])):
        failed: list = []
        parse_each([big, small], _refuse, failed, payload_kept=kept)
        assert [f.payload for f in failed] == payloads
        assert failed[0].reason == f"no (a 500002-byte value: {kept} bytes kept)"
        assert failed[1].reason == ("no" if kept else "no (a 2-byte value: 0 bytes kept)")
        assert len(failed[0].image_key) == MAX_KEY_BYTES
    assert key_of_malformed("é".encode() * 1000) == "é" * 512


# --- upload -----------------------------------------------------------------------------------------------


def _jpeg() -> bytes:
    return _encoded(Image.new("RGB", (8, 8)), "JPEG")


def _walk(source: Path, max_bytes: int | None = None) -> tuple[list[str], list[Rejected]]:
    found, rejected = [], []
    for item in iter_source_files([source], Naming(), max_bytes):
        (rejected if isinstance(item, Rejected) else found).append(item)
    return sorted(f.key for f in found), rejected


def test_upload_follows_no_folder_link_and_no_link_out_of_the_source(tmp_path):
    source, outside = tmp_path / "photos", tmp_path / "private"
    (source / "cats").mkdir(parents=True)
    outside.mkdir()
    (source / "cats" / "a.jpg").write_bytes(_jpeg())
    (outside / "secret.jpg").write_bytes(_jpeg())
    (source / "cats" / "loop").symlink_to(source)  # a cycle
    (source / "elsewhere").symlink_to(outside)  # a folder outside
    (source / "secret.jpg").symlink_to(outside / "secret.jpg")  # a file outside
    (source / "same.jpg").symlink_to(source / "cats" / "a.jpg")  # a file inside: taken
    keys, rejected = _walk(source)
    assert keys == ["cats/a.jpg", "same.jpg"]
    assert sorted(Path(r.origin).name for r in rejected) == ["elsewhere", "loop", "secret.jpg"]
    assert all("not followed" in r.reason for r in rejected)


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_upload_bounds_archive_members_and_nesting(tmp_path):
    nested = _tar({"deep.jpg": _jpeg()})
    for _ in range(MAX_ARCHIVE_DEPTH - 1):
        nested = _tar({"inner.tar": nested})
    archive = tmp_path / "train.tar"
    archive.write_bytes(_tar({"ok.jpg": _jpeg(), "big.jpg": _jpeg() + bytes(5000), "n01/class.tar": nested}))
    keys, rejected = _walk(archive, max_bytes=4096)
    assert keys == ["ok.jpg"]
    assert {r.origin.rsplit(":", 1)[1]: r.reason.split(":")[0] for r in rejected} == {
        "big.jpg": f"{len(_jpeg()) + 5000} bytes", "inner.tar": f"archive nested more than {MAX_ARCHIVE_DEPTH} deep"}


def test_upload_refuses_a_file_the_workers_would_not_read(tmp_path):
    path = tmp_path / "large.jpg"
    path.write_bytes(_jpeg() + bytes(5000))
    file = upload_module.SourceFile("k", str(path), "s", None, None, path=path)
    outcome = upload_module.inspect_file(file, max_pixels=10**8, max_bytes=4096)
    assert isinstance(outcome, Rejected) and "VISIONSTREAM_S3_MAX_OBJECT_BYTES" in outcome.reason


def test_upload_to_a_bucket_the_workers_do_not_read_does_not_start(tmp_path):
    settings = load_settings(s3_bucket="images")
    with pytest.raises(upload_module.UploadRefused, match="VISIONSTREAM_S3_ALLOWED_BUCKETS"):
        asyncio.run(upload_module.upload(settings, [tmp_path], bucket="elsewhere", dry_run=True, progress=False))
