"""Bulk load images into S3 and image_info: walk lazily, validate, upload, then register.

A row in image_info is written only after its object is uploaded, so a run stopped at any point
(Ctrl-C, kill, a crash) is finished by running it again: keys already in image_info are skipped without
being read or uploaded; the others are uploaded (again, if only the object made it) and registered.
The primary key and ON CONFLICT DO NOTHING keep concurrent or repeated runs from adding duplicate rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import re
import tarfile
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import IO, Any, TextIO

import asyncpg
from botocore.exceptions import ClientError
from tqdm import tqdm

from visionstream.core.db import create_pool
from visionstream.core.imaging import ImageDecodeError, Preprocessing, probe_image
from visionstream.core.retry import Backoff
from visionstream.core.s3 import TRANSIENT_S3_ERRORS, s3_bad_message, s3_client
from visionstream.images.producer import produce_keys
from visionstream.settings import Settings

log = logging.getLogger(__name__)

CHUNK_FILES = 256  # files taken from the walker at a time, and keys per "already registered?" query
ROW_BATCH = 20_000  # rows per COPY; a partial batch is written every FLUSH_SECONDS
FLUSH_SECONDS = 0.5  # bounds what a kill loses: objects uploaded in this window are uploaded again
MULTIPART_THRESHOLD = 8 << 20  # larger files go up in parts and are never held in memory whole
READ_BLOCK = 1 << 20
PROBE_BYTES = 1 << 20  # header bytes given to the probe for large files (EXIF and ICC blocks included)
NEW_KEYS_BUFFER = 50_000  # registered keys waiting for Kafka; a slow broker slows the upload instead
REJECTS_SHOWN = 20
# Archives are untrusted input too: a member the workers would not read is rejected unread (its size is in
# its header), and members and nesting are bounded (ImageNet's train tar: 1,000 class tars one level down,
# 1,300 images each), so a crafted archive cannot walk the upload through endless or ever deeper members.
MAX_ARCHIVE_MEMBERS = 2_000_000  # per archive, nested ones counted apart
MAX_ARCHIVE_DEPTH = 2  # an archive, and archives inside it; one more level is rejected unread

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
WNID = re.compile(r"n\d{8}")
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}
# What a complete file of the format ends with (before any padding); a cut-off file lacks it.
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
TAIL_PADDING = b"\x00\t\n\r "

# Outages are waited out; any other database error (no table, no permission) ends the run at once,
# since an operator has to fix it and the run resumes where it stopped.
TRANSIENT_DB_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)

COLUMNS = ("image_key", "bucket", "size_bytes", "width", "height", "format", "label", "split", "source",
           "content_sha256")
STAGING_TABLE = "image_info_upload"
CREATE_STAGING = f"CREATE TEMP TABLE {STAGING_TABLE} (LIKE image_info INCLUDING DEFAULTS) ON COMMIT DROP"
INSERT_STAGED = (
    f"INSERT INTO image_info ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} FROM {STAGING_TABLE} "
    "ON CONFLICT (image_key) DO NOTHING RETURNING image_key, bucket"
)
REGISTERED_KEYS = "SELECT image_key FROM image_info WHERE image_key = ANY($1::text[])"


class UploadError(RuntimeError):
    """S3 refused a request for a reason retrying cannot fix (no such bucket, access denied)."""


class UploadRefused(ValueError):
    """The upload would store what the workers will not read: it does not start."""


@dataclass(frozen=True, slots=True)
class Rejected:
    origin: str  # the file's path, or archive.tar:member
    reason: str


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file found in a SOURCE: on disk (read later, in a worker thread) or an archive member (read)."""

    key: str
    origin: str
    source: str
    label: str | None
    split: str | None
    path: Path | None = None
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """A file that passed validation, with its header metadata and hash."""

    file: SourceFile
    size: int
    format: str
    width: int
    height: int
    sha256: str
    data: bytes | None  # the whole file, or None for a large file on disk (uploaded part by part)

    def row(self, bucket: str) -> tuple[Any, ...]:
        f = self.file
        return (f.key, bucket, self.size, self.width, self.height, self.format, f.label, f.split, f.source,
                self.sha256)


@dataclass
class UploadSummary:
    """What a run did; ``str()`` is the report printed at the end."""

    dry_run: bool = False
    files: int = 0  # every file found, whatever became of it
    skipped: int = 0  # already in image_info: neither read nor uploaded
    valid: int = 0  # passed validation (and, unless a dry run, were uploaded)
    bytes: int = 0  # size of the valid files
    uploaded: int = 0
    registered: int = 0  # rows added; fewer than uploaded only when another run registered some first
    produced: int = 0  # keys sent to the images topic
    rejected: int = 0
    rejects: list[Rejected] = field(default_factory=list)  # the first REJECTS_SHOWN; all are in the file
    rejects_file: Path | None = None
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.valid / self.seconds if self.seconds else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        done = "validated (dry run)" if self.dry_run else f"uploaded {self.uploaded}, registered {self.registered}"
        lines = [
            f"{self.files} files: {done}, skipped {self.skipped} already registered, rejected {self.rejected}",
            f"{self.bytes / 1e6:,.1f} MB in {self.seconds:.1f}s: "
            f"{self.images_per_second:,.1f} images/s, {self.megabytes_per_second:,.1f} MB/s",
        ]
        if self.produced:
            lines.append(f"sent {self.produced} keys to the images topic")
        lines += [f"  rejected {r.origin}: {r.reason}" for r in self.rejects]
        if self.rejected > len(self.rejects):
            lines.append(f"  ... and {self.rejected - len(self.rejects)} more")
        if self.rejected and self.rejects_file is not None:
            lines.append(f"all rejects are listed in {self.rejects_file}")
        return "\n".join(lines)


# --- Finding files ----------------------------------------------------------------------------------------


def read_val_labels(path: Path) -> dict[str, str]:
    """File name (extension optional) -> label, from lines like ``name wnid`` or ``name,wnid ...``.

    Kaggle's LOC_val_solution.csv works as it is: a .csv file's first line is its header, and only the
    first word of the prediction string (the wnid) is kept.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix.lower() == ".csv":
        lines = lines[1:]
    labels = {}
    for line in lines:
        fields = re.split(r"[,\s]+", line.strip())
        if len(fields) >= 2 and fields[0] and fields[1]:
            labels[_stem(fields[0])] = fields[1]
    if not labels:
        raise ValueError(f"{path}: no 'file label' lines")
    return labels


@dataclass(frozen=True)
class Naming:
    """How a file's place in its SOURCE becomes its object key, label and split."""

    prefix: str = ""
    split: str | None = None
    val_labels: Mapping[str, str] = field(default_factory=dict)

    def describe(self, source: Path, parts: tuple[str, ...], *, origin: str, path: Path | None = None,
                 data: bytes | None = None) -> SourceFile:
        """parts: the file's path inside the SOURCE, a nested archive standing for a folder of its name."""
        root = _archive_stem(source.name)
        folders = parts[:-1]
        return SourceFile(
            key=self.prefix + "/".join(parts), origin=origin, source=str(source),
            label=self._label(root, folders, parts[-1]),
            split=self.split or next(filter(None, map(_split_named, (*reversed(folders), root))), None),
            path=path, data=data,
        )

    def _label(self, root: str, folders: tuple[str, ...], name: str) -> str | None:
        if (label := self.val_labels.get(_stem(name))) is not None:
            return label
        if folders:  # a class folder: train/<wnid>/x.JPEG, or photos/<label>/x.jpg
            return None if _split_named(folders[-1]) else folders[-1]
        # Files at the top of the SOURCE: its own name is a label only when it is a wnid (train/n01440764).
        return root if WNID.fullmatch(root) else None


def _split_named(name: str) -> str | None:
    """The split a folder or archive name stands for: train, ILSVRC2012_img_val, validation ..."""
    return next((SPLIT_NAMES[t] for t in re.split(r"[^a-z]+", name.lower()) if t in SPLIT_NAMES), None)


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _archive_stem(name: str) -> str:
    lower = name.lower()
    suffix = next((s for s in ARCHIVE_SUFFIXES if lower.endswith(s)), "")
    return name[: len(name) - len(suffix)]


def _directory_files(root: Path) -> Iterator[tuple[Path, tuple[str, ...]] | Rejected]:
    """(path, parts below root) of every non-hidden file, lazily: memory grows with folders, not files.

    Symbolic links to folders are not followed (a link to an ancestor is an endless walk, and any link can
    lead outside the SOURCE); a link to a file is taken only when that file is inside the SOURCE.
    """
    inside = root.resolve()
    pending: list[tuple[Path, tuple[str, ...]]] = [(root, ())]
    while pending:
        folder, parts = pending.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_symlink():
                        target = Path(entry.path).resolve()
                        if not (target.is_file() and target.is_relative_to(inside)):
                            yield Rejected(entry.path, "symbolic link to a folder or outside the source: not followed")
                            continue
                        yield Path(entry.path), (*parts, entry.name)
                    elif entry.is_dir(follow_symlinks=False):
                        pending.append((Path(entry.path), (*parts, entry.name)))
                    elif entry.is_file(follow_symlinks=False):
                        yield Path(entry.path), (*parts, entry.name)
        except OSError as exc:
            yield Rejected(str(folder), f"unreadable folder: {exc.strerror or exc}")


def _archive_files(naming: Naming, source: Path, archive: Path | IO[bytes], origin: str,
                   base: tuple[str, ...], max_bytes: int | None = None, depth: int = 1
                   ) -> Iterator[SourceFile | Rejected]:
    """Members of a tar archive, in one streaming pass; a member that is itself a tar is walked as a folder
    (ImageNet's train archive holds one tar per class). Members over ``max_bytes`` are rejected unread."""
    try:
        with (tarfile.open(archive, "r|*") if isinstance(archive, Path)
              else tarfile.open(fileobj=archive, mode="r|*")) as tar:
            for count, member in enumerate(tar, start=1):
                if count > MAX_ARCHIVE_MEMBERS:
                    yield Rejected(origin, f"more than {MAX_ARCHIVE_MEMBERS} members: the rest not read")
                    return
                parts = (*base, *(p for p in PurePosixPath(member.name).parts if p not in ("/", "..")))
                if not member.isfile() or len(parts) == len(base) or parts[-1].startswith("."):
                    continue
                member_origin = f"{origin}:{member.name}"
                if is_archive(parts[-1]):
                    if depth >= MAX_ARCHIVE_DEPTH:
                        yield Rejected(member_origin, f"archive nested more than {MAX_ARCHIVE_DEPTH} deep: not read")
                        continue
                    yield from _archive_files(naming, source, tar.extractfile(member), member_origin,
                                              (*parts[:-1], _archive_stem(parts[-1])), max_bytes, depth + 1)
                elif max_bytes is not None and member.size > max_bytes:
                    yield Rejected(member_origin, too_large(member.size, max_bytes))
                else:
                    yield naming.describe(source, parts, origin=member_origin, data=tar.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        yield Rejected(origin, f"unreadable archive: {exc}")


def too_large(size: int, max_bytes: int) -> str:
    return f"{size} bytes: workers read at most {max_bytes} (VISIONSTREAM_S3_MAX_OBJECT_BYTES)"


def iter_source_files(sources: Sequence[Path], naming: Naming,
                      max_bytes: int | None = None) -> Iterator[SourceFile | Rejected]:
    """Every file of every SOURCE (folder or tar archive), lazily; archive members come with their bytes,
    unless they are over ``max_bytes``."""
    for source in sources:
        if not source.is_dir():
            yield from _archive_files(naming, source, source, str(source), (), max_bytes)
            continue
        for item in _directory_files(source):
            if isinstance(item, Rejected):
                yield item
                continue
            path, parts = item
            if is_archive(path.name):
                yield from _archive_files(naming, source, path, str(path), (*parts[:-1], _archive_stem(path.name)),
                                          max_bytes)
            else:
                yield naming.describe(source, parts, origin=str(path), path=path)


def count_files(sources: Sequence[Path], stop: threading.Event) -> int | None:
    """How many files the walk will find, from folder listings alone; None when archives (whose members
    are only known by reading them) are among the sources, or when stopped."""
    total = 0
    for source in sources:
        if not source.is_dir():
            return None
        for item in _directory_files(source):
            if stop.is_set() or (not isinstance(item, Rejected) and is_archive(item[0].name)):
                return None
            total += 1
    return total


# --- Validating -------------------------------------------------------------------------------------------


def inspect_file(file: SourceFile, max_pixels: int, max_bytes: int | None = None) -> PreparedImage | Rejected:
    """Read, validate and hash one file; one over ``max_bytes`` is rejected unread. Blocking: runs in a
    worker thread."""
    try:
        on_disk = file.path.stat().st_size if file.data is None else len(file.data)
        if max_bytes is not None and on_disk > max_bytes:
            return Rejected(file.origin, too_large(on_disk, max_bytes))
        if file.data is None and on_disk > MULTIPART_THRESHOLD:
            size, head, tail, digest = _scan_large_file(file.path)
            data = None
        else:
            data = file.data if file.data is not None else file.path.read_bytes()
            size, head, tail, digest = len(data), data, data[-READ_BLOCK:], hashlib.sha256(data).hexdigest()
        if size == 0:
            return Rejected(file.origin, "zero bytes")
        try:
            fmt, width, height = probe_image(head)
        except ImageDecodeError as exc:
            return Rejected(file.origin, exc.reason)
        if width * height > max_pixels:
            return Rejected(file.origin, f"{width}x{height} exceeds {max_pixels} pixels")
        if not tail.rstrip(TAIL_PADDING).endswith(END_MARKERS.get(fmt, b"")):
            # No end marker: truncated, or data trailing the image (some cameras append some). Only a full
            # decode tells them apart, so the rare file that fails the cheap check gets one.
            try:
                Preprocessing(max_pixels)(data if data is not None else file.path.read_bytes())
            except ImageDecodeError as exc:
                return Rejected(file.origin, f"truncated or corrupt: {exc.reason}")
    except OSError as exc:
        return Rejected(file.origin, f"unreadable: {exc.strerror or exc}")
    return PreparedImage(file, size, fmt, width, height, digest, data)


def _scan_large_file(path: Path) -> tuple[int, bytes, bytes, str]:
    """(size, head, tail, sha256) in one pass of READ_BLOCK reads."""
    digest = hashlib.sha256()
    size, head, block = 0, b"", b""
    with path.open("rb") as f:
        while chunk := f.read(READ_BLOCK):
            digest.update(chunk)
            if size < PROBE_BYTES:
                head += chunk[: PROBE_BYTES - size]
            size += len(chunk)
            block = chunk
    return size, head, block, digest.hexdigest()


def _read_range(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


# --- Storing ----------------------------------------------------------------------------------------------


class ObjectUploader:
    """Puts validated images into one bucket: one PUT each, or a multipart upload above the threshold."""

    def __init__(self, client: Any, bucket: str, backoff: Backoff) -> None:
        self._client = client
        self.bucket = bucket
        self._backoff = backoff

    async def check_bucket(self) -> None:
        await self._call(f"S3 HEAD bucket {self.bucket}", functools.partial(self._client.head_bucket, Bucket=self.bucket))

    async def put(self, image: PreparedImage) -> None:
        key, content_type = image.file.key, CONTENT_TYPES.get(image.format, "application/octet-stream")
        target = {"Bucket": self.bucket, "Key": key}
        if image.size <= MULTIPART_THRESHOLD and image.data is not None:
            await self._call(f"S3 PUT {key}", functools.partial(
                self._client.put_object, **target, Body=image.data, ContentType=content_type))
            return
        created = await self._call(f"S3 multipart start {key}", functools.partial(
            self._client.create_multipart_upload, **target, ContentType=content_type))
        target["UploadId"] = created["UploadId"]
        part_size = max(MULTIPART_THRESHOLD, -(-image.size // 10_000))  # S3 takes at most 10,000 parts
        try:
            parts = []
            for number, offset in enumerate(range(0, image.size, part_size), start=1):
                body = (image.data[offset : offset + part_size] if image.data is not None
                        else await asyncio.to_thread(_read_range, image.file.path, offset, part_size))
                sent = await self._call(f"S3 part {number} of {key}", functools.partial(
                    self._client.upload_part, **target, PartNumber=number, Body=body))
                parts.append({"PartNumber": number, "ETag": sent["ETag"]})
            await self._call(f"S3 multipart complete {key}", functools.partial(
                self._client.complete_multipart_upload, **target, MultipartUpload={"Parts": parts}))
        except BaseException:
            with contextlib.suppress(Exception):  # the error being raised is the one worth reporting
                await self._client.abort_multipart_upload(**target)
            raise

    async def _call(self, what: str, request: Callable[[], Any]) -> Any:
        async def attempt() -> Any:
            try:
                return await request()
            except ClientError as exc:
                if s3_bad_message(exc):
                    raise UploadError(f"{what}: {exc}") from None
                raise

        return await self._backoff.run(what, attempt, TRANSIENT_S3_ERRORS)


class ImageRegistry:
    """image_info for the upload: which keys are registered, and COPY batches of rows of uploaded objects."""

    def __init__(self, pool: asyncpg.Pool, backoff: Backoff, produce: bool) -> None:
        self._pool = pool
        self._backoff = backoff
        self._pending: list[tuple[Any, ...]] = []
        self._lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._new_keys: asyncio.Queue[tuple[str, str] | None] | None = (
            asyncio.Queue(NEW_KEYS_BUFFER) if produce else None)
        self.registered = 0

    async def registered_keys(self, keys: list[str]) -> set[str]:
        async def query() -> set[str]:
            async with self._pool.acquire() as conn:
                return {row["image_key"] for row in await conn.fetch(REGISTERED_KEYS, keys)}

        return await self._backoff.run("PostgreSQL key check", query, TRANSIENT_DB_ERRORS)

    async def add(self, row: tuple[Any, ...]) -> None:
        self._pending.append(row)
        if len(self._pending) >= ROW_BATCH:
            await self.flush(min_rows=ROW_BATCH)

    async def flush(self, min_rows: int = 1) -> None:
        async with self._lock:
            if len(self._pending) < min_rows:
                return  # another caller wrote the batch while this one waited for the lock
            rows, self._pending = self._pending, []
            inserted = await self._backoff.run(
                f"register {len(rows)} images", functools.partial(self._insert, rows), TRANSIENT_DB_ERRORS)
        self.registered += len(inserted)
        if self._new_keys is not None:
            for row in inserted:
                await self._new_keys.put((row["image_key"], row["bucket"]))

    async def _insert(self, rows: list[tuple[Any, ...]]) -> list[asyncpg.Record]:
        async with self._pool.acquire() as conn, conn.transaction():
            # Not waiting for the WAL flush is safe here: a commit lost in a server crash only loses rows,
            # and a row-less object is uploaded again and registered by the next run.
            await conn.execute("SET LOCAL synchronous_commit TO off")
            await conn.execute(CREATE_STAGING)
            await conn.copy_records_to_table(STAGING_TABLE, records=rows, columns=COLUMNS)
            return await conn.fetch(INSERT_STAGED)

    async def flush_until_closed(self) -> None:
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), FLUSH_SECONDS)
            await self.flush()

    async def close(self) -> None:
        """Write what is left and end the stream of new keys."""
        self._closed.set()
        await self.flush()
        if self._new_keys is not None:
            await self._new_keys.put(None)

    async def new_keys(self) -> AsyncIterator[tuple[str, str]]:
        """(image_key, bucket) of each row as it is registered, until close()."""
        assert self._new_keys is not None, "created with produce=False"
        while (item := await self._new_keys.get()) is not None:
            yield item


# --- Running ----------------------------------------------------------------------------------------------


class _Tracker:
    """Counts each file's outcome into the summary, the progress bar and the rejects file."""

    def __init__(self, summary: UploadSummary, bar: tqdm) -> None:
        self.summary = summary
        self._bar = bar
        self._rejects_out: TextIO | None = None

    def skip(self, count: int) -> None:
        self.summary.skipped += count
        self._advance(count)

    def accept(self, image: PreparedImage, uploaded: bool) -> None:
        self.summary.valid += 1
        self.summary.uploaded += uploaded
        self.summary.bytes += image.size
        self._advance(1)

    def reject(self, rejected: Rejected) -> None:
        self.summary.rejected += 1
        if len(self.summary.rejects) < REJECTS_SHOWN:
            self.summary.rejects.append(rejected)
        if self.summary.rejects_file is not None:
            if self._rejects_out is None:
                self._rejects_out = self.summary.rejects_file.open("w", encoding="utf-8")
                self._rejects_out.write("path\treason\n")
            self._rejects_out.write(f"{_tsv_field(rejected.origin)}\t{_tsv_field(rejected.reason)}\n")
        self._advance(1)

    def close(self) -> None:
        if self._rejects_out is not None:
            self._rejects_out.close()

    def _advance(self, count: int) -> None:
        s = self.summary
        s.files += count
        self._bar.set_postfix_str(f"{s.bytes / 1e6:,.0f} MB, skipped {s.skipped}, rejected {s.rejected}",
                                  refresh=False)
        self._bar.update(count)


def _tsv_field(text: str) -> str:
    return re.sub(r"[\t\r\n]", " ", text)


async def _worker(queue: asyncio.Queue[SourceFile | None], inspect: Callable[[SourceFile], Any],
                  tracker: _Tracker, uploader: ObjectUploader | None, registry: ImageRegistry | None) -> None:
    while (file := await queue.get()) is not None:
        outcome = await asyncio.to_thread(inspect, file)
        if isinstance(outcome, Rejected):
            tracker.reject(outcome)
            continue
        if uploader is not None and registry is not None:
            await uploader.put(outcome)
            await registry.add(outcome.row(uploader.bucket))  # only now: a row means the object exists
        tracker.accept(outcome, uploaded=uploader is not None)


async def _feed(files: Iterator[SourceFile | Rejected], queue: asyncio.Queue[SourceFile | None],
                tracker: _Tracker, registry: ImageRegistry | None) -> None:
    """Walk in a thread, a chunk at a time; queue the files whose keys are not registered yet."""
    while chunk := await asyncio.to_thread(lambda: list(islice(files, CHUNK_FILES))):
        found = []
        for item in chunk:
            if isinstance(item, Rejected):
                tracker.reject(item)
            else:
                found.append(item)
        registered = await registry.registered_keys([f.key for f in found]) if registry and found else set()
        tracker.skip(sum(f.key in registered for f in found))
        for file in found:
            if file.key not in registered:
                await queue.put(file)


async def _run(settings: Settings, files: Iterator[SourceFile | Rejected], tracker: _Tracker, *,
               bucket: str, concurrency: int, dry_run: bool, produce: bool) -> None:
    inspect = functools.partial(inspect_file, max_pixels=settings.max_image_pixels,
                                max_bytes=settings.s3_max_object_bytes)
    queue: asyncio.Queue[SourceFile | None] = asyncio.Queue(2 * concurrency)
    async with contextlib.AsyncExitStack() as resources:
        uploader = registry = None
        if not dry_run:
            backoff = Backoff()
            pool = await resources.enter_async_context(await create_pool(settings))
            # As many S3 connections as uploads in flight.
            client = await resources.enter_async_context(
                s3_client(settings.model_copy(update={"s3_concurrency": concurrency})))
            uploader = ObjectUploader(client, bucket, backoff)
            await uploader.check_bucket()
            registry = ImageRegistry(pool, backoff, produce)
        try:
            async with asyncio.TaskGroup() as tasks:
                producing = (tasks.create_task(produce_keys(settings, registry.new_keys()))
                             if registry and produce else None)
                if registry:
                    tasks.create_task(registry.flush_until_closed())
                workers = [tasks.create_task(_worker(queue, inspect, tracker, uploader, registry))
                           for _ in range(concurrency)]
                await _feed(files, queue, tracker, registry)
                for _ in workers:
                    await queue.put(None)
                await asyncio.gather(*workers)
                if registry:
                    await registry.close()
        except BaseExceptionGroup as group:
            # Report the failure that stopped the run, not the group the task machinery wraps it in.
            raise group.exceptions[0] from None
        if registry:
            tracker.summary.registered = registry.registered
        if producing:
            tracker.summary.produced = producing.result()


async def upload(
    settings: Settings,
    sources: Sequence[Path | str],
    *,
    bucket: str | None = None,
    prefix: str = "",
    split: str | None = None,
    val_labels: Path | None = None,
    concurrency: int = 64,
    limit: int | None = None,
    dry_run: bool = False,
    produce: bool = False,
    progress: bool = True,
    rejects: Path | None = None,
) -> UploadSummary:
    """Upload every image of the sources (folders, tar archives) to S3 and register it in image_info.

    Files already registered are skipped; invalid ones are rejected (listed in the summary and, given a
    path, in the ``rejects`` TSV file) and never uploaded. ``produce`` sends each newly registered key to
    the images topic right away; ``dry_run`` only walks and validates, touching neither S3 nor PostgreSQL.
    """
    paths = [Path(s).absolute() for s in sources]
    for path in paths:
        if not (path.is_dir() or (path.is_file() and is_archive(path.name))):
            raise ValueError(f"{path}: not a folder or a tar archive ({', '.join(ARCHIVE_SUFFIXES)})")
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if bucket is not None and bucket not in settings.allowed_buckets:
        raise UploadRefused(f"workers would dead-letter every image of bucket {bucket}: it is not "
                         "VISIONSTREAM_S3_BUCKET and not in VISIONSTREAM_S3_ALLOWED_BUCKETS; add it there (for the "
                         "workers too)")
    naming = Naming(prefix, split, read_val_labels(val_labels) if val_labels else {})
    files = iter_source_files(paths, naming, settings.s3_max_object_bytes)
    if limit is not None:
        files = islice(files, limit)
    if rejects is not None:
        rejects.unlink(missing_ok=True)  # the file lists this run's rejects, and exists only if there are any

    summary = UploadSummary(dry_run=dry_run, rejects_file=rejects)
    started = time.perf_counter()
    stop_counting = threading.Event()
    with tqdm(desc="validate" if dry_run else "upload", unit="file", disable=not progress) as bar:
        tracker = _Tracker(summary, bar)

        def show_total(task: asyncio.Task[int | None]) -> None:
            if not task.cancelled() and task.exception() is None and (total := task.result()) is not None:
                bar.total = total if limit is None else min(total, limit)
                bar.refresh()

        counting = asyncio.ensure_future(asyncio.to_thread(count_files, paths, stop_counting)) if progress else None
        if counting:
            counting.add_done_callback(show_total)
        try:
            await _run(settings, files, tracker, bucket=bucket or settings.s3_bucket, concurrency=concurrency,
                       dry_run=dry_run, produce=produce)
        finally:
            stop_counting.set()
            if counting:
                counting.remove_done_callback(show_total)
            tracker.close()
    summary.seconds = time.perf_counter() - started
    return summary
