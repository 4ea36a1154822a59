"""Bulk upload without any server: naming and labels, validation of each file, a dry run."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from visionstream.bulk import upload as upload_module
from visionstream.bulk.upload import (
    Naming,
    Rejected,
    inspect_file,
    read_val_labels,
    upload,
)
from visionstream.settings import load_settings

from ..media import WNIDS, jpegs, write_imagenet_tree


def test_class_folders_give_label_and_split() -> None:
    naming = Naming("p/")
    source = Path("/data/ILSVRC/train")
    described = naming.describe(source, ("n01440764", "a.JPEG"), origin="x")
    assert (described.key, described.label, described.split) == ("p/n01440764/a.JPEG", "n01440764", "train")
    own = naming.describe(Path("/home/me/photos"), ("cats", "2019", "x.jpg"), origin="x")
    assert (own.label, own.split) == ("2019", None)
    assert naming.describe(Path("/data/val"), ("x.JPEG",), origin="x").label is None
    # A class folder given as the SOURCE itself still labels its files.
    assert naming.describe(Path("/data/train/n01440764"), ("x.JPEG",), origin="x").label == "n01440764"
    # A nested per-class archive stands for a folder of its name (ImageNet's train tar).
    nested = naming.describe(Path("/d/ILSVRC2012_img_train.tar"), ("n02102040", "y.JPEG"), origin="x")
    assert (nested.label, nested.split, nested.source) == ("n02102040", "train", "/d/ILSVRC2012_img_train.tar")
    assert Naming(split="val").describe(source, ("n01440764", "a.JPEG"), origin="x").split == "val"


def test_val_labels_from_text_and_kaggle_csv(tmp_path: Path) -> None:
    text = tmp_path / "val.txt"
    text.write_text("ILSVRC2012_val_00000001.JPEG n01751748\nILSVRC2012_val_00000002.JPEG\tn09193705\n\n")
    assert read_val_labels(text) == {"ILSVRC2012_val_00000001": "n01751748", "ILSVRC2012_val_00000002": "n09193705"}
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01751748 111 21 222 55 n01751748 1 2 3 4\n")
    assert read_val_labels(csv) == {"ILSVRC2012_val_00000001": "n01751748"}
    assert Naming(val_labels=read_val_labels(csv)).describe(
        Path("/v"), ("ILSVRC2012_val_00000001.JPEG",), origin="x").label == "n01751748"
    indices_only = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    indices_only.write_text("65\n970\n")
    with pytest.raises(ValueError, match="no 'file label' lines"):
        read_val_labels(indices_only)


@pytest.mark.parametrize(("mangle", "reason"), [
    (lambda jpeg: b"", "zero bytes"),
    (lambda jpeg: b"just some text\n", "not a JPEG/PNG image"),
    (lambda jpeg: jpeg[: len(jpeg) // 2], "truncated or corrupt"),
    (lambda jpeg: jpeg[:2] + bytes(range(256)) * 40 + b"\xff\xd9", "not a JPEG/PNG image"),  # corrupt header
])
def test_bad_files_are_rejected_with_a_reason(mangle, reason: str) -> None:
    file = upload_module.SourceFile("k", "origin", "src", None, None, data=mangle(jpegs(1)[0]))
    outcome = inspect_file(file, max_pixels=10**8)
    assert isinstance(outcome, Rejected) and reason in outcome.reason


def test_data_after_the_end_marker_is_not_truncation() -> None:
    jpeg = jpegs(1)[0]
    image = inspect_file(upload_module.SourceFile("k", "o", "s", None, None, data=jpeg + b"trailer"), 10**8)
    assert not isinstance(image, Rejected)
    assert (image.format, image.width, image.height) == ("JPEG", 500, 375)
    assert image.sha256 == hashlib.sha256(jpeg + b"trailer").hexdigest()


def test_dry_run_walks_and_validates_without_the_stack(tmp_path: Path) -> None:
    files = write_imagenet_tree(tmp_path / "data", per_class=2)
    (tmp_path / "data" / "train" / WNIDS[0] / "empty.JPEG").write_bytes(b"")
    # No server listens here: a dry run must not try to reach one.
    offline = load_settings(database_url="postgresql://nobody@127.0.0.1:9/none", s3_endpoint_url="http://127.0.0.1:9")
    summary = asyncio.run(upload(offline, [tmp_path / "data"], dry_run=True, progress=False))
    assert (summary.files, summary.valid, summary.rejected, summary.uploaded) == (len(files) + 1, len(files), 1, 0)
    assert summary.bytes == sum(len(data) for data, _ in files.values())


