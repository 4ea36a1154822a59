"""Replay a prefix through a second classifier version, compare the versions in SQL, report and plot.

Real stack: a worker of version 1 on the images topic, one of version 2 on the replay topic. Version 2 is
version 1's weights with a perturbed classifier head (or, without the shared weights, two random-seeded
networks), so some top-1s change. Images lie in an ImageNet layout, train/<wnid>/..., for the accuracy view.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
import torch
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from PIL import Image
from torchvision.models import squeezenet1_1

from visionstream.bulk.upload import upload
from visionstream.classification.model import weights_file_version
from visionstream.cli import main as cli
from visionstream.core.db import connect, migrate
from visionstream.core.kafka_client import kafka_client_kwargs
from visionstream.dev.samples import sample_images
from visionstream.dev.stack import free_port
from visionstream.dev.workerproc import WorkerProcess
from visionstream.images.producer import keys_from_database, produce_keys
from visionstream.images.replay import Selection, count_selected, replay
from visionstream.topics import ensure_topics

from ..media import squeezenet_weights

PARTITIONS = 2
TOP_K = 5
# Sample photos laid out as ImageNet classes: the wnid of what each photo shows, and its class index.
LABELS = {"chelsea": ("n02124075", 285), "coffee": ("n07920052", 967), "rocket": ("n04266014", 812)}
COPIES = 8  # 24 images


def write_weights(tmp_path) -> tuple:
    """(version 1 file, version 2 file): the shared weights and a copy with a perturbed head."""
    shared = squeezenet_weights()
    if shared is not None:
        state = torch.load(shared, map_location="cpu", weights_only=True)
    else:
        torch.manual_seed(1)
        state = squeezenet1_1(weights=None).state_dict()
    first = tmp_path / "v1.pth"
    torch.save(state, first)
    generator = torch.Generator().manual_seed(2)
    head = state["classifier.1.weight"]
    state = dict(state, **{"classifier.1.weight": head + torch.randn(head.shape, generator=generator) * head.std()})
    second = tmp_path / "v2.pth"
    torch.save(state, second)
    return first, second


def image_tree(root):
    wanted = {name: 0 for name in LABELS}
    for name, file_name, data in sample_images(len(LABELS) * COPIES * 3):
        if name in wanted and wanted[name] < COPIES:
            folder = root / "train" / LABELS[name][0]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}-{wanted[name]}.jpg").write_bytes(data)
            wanted[name] += 1
    assert all(count == COPIES for count in wanted.values()), wanted
    return root / "train"


async def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := await predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.3)
    return value


async def fetch(settings, query: str, *args):
    conn = await connect(settings)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def fetchval(settings, query: str, *args):
    return (await fetch(settings, query, *args))[0][0]


async def committed(settings, group: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings))
    await admin.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        offsets = await admin.list_consumer_group_offsets(group, partitions=partitions)
        return sum(max(meta.offset, 0) for meta in offsets.values())
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def versions(stack, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replay")
    name = f"rp{uuid.uuid4().hex[:8]}"
    prefix = f"{name}/"
    first, second = write_weights(tmp)
    common = dict(images_topic=f"{name}-images", replay_topic=f"{name}-replay", predictions_topic=f"{name}-pred",
                  dead_letter_topic=f"{name}-dead", topic_partitions=PARTITIONS, top_k=TOP_K, batch_size=16,
                  compile_model=False)
    settings = stack.settings(app_id=f"{name}-v1", **common)
    tree = image_tree(tmp / "images")

    async def setup() -> int:
        await migrate(settings)
        await ensure_topics(settings)
        return (await upload(settings, [tree], prefix=prefix, progress=False)).registered

    assert asyncio.run(setup()) == len(LABELS) * COPIES
    workers = []
    try:
        for version, weights, topic in (("v1", first, common["images_topic"]), ("v2", second, common["replay_topic"])):
            port = free_port()
            env = stack.env(**{**common, "app_id": f"{name}-{version}", "images_topic": topic,
                               "model_weights": weights, "hostname": f"{name}-{version}", "web_port": port})
            workers.append(WorkerProcess(env, tmp / f"{version}.log", port))
        for worker in workers:
            worker.wait_ready()
        yield dict(settings=settings, prefix=prefix, name=name, tmp=tmp, images=len(LABELS) * COPIES,
                   v1=f"squeezenet1_1@{weights_file_version(first)}",
                   v2=f"squeezenet1_1@{weights_file_version(second)}", stack=stack)
    finally:
        for worker in workers:
            worker.stop()


def test_replay_compare_and_report(versions, monkeypatch, capsys):
    settings, prefix, images = versions["settings"], versions["prefix"], versions["images"]
    v1, v2 = versions["v1"], versions["v2"]
    assert v1 != v2
    rows_of = "SELECT count(*) FROM prediction_results WHERE model = $1 AND starts_with(image_key, $2)"

    async def scenario():
        await produce_keys(settings, keys_from_database(settings, prefix=prefix))
        await wait_until(lambda: _equals(fetchval(settings, rows_of, v1, prefix), images * TOP_K), 300,
                         "version 1's results")

        # Part of the prefix first, then what is missing: --only-missing resumes.
        started = time.monotonic()
        assert await replay(settings, Selection(prefix=prefix, limit=10)) == 10
        await wait_until(lambda: _equals(fetchval(settings, rows_of, v2, prefix), 10 * TOP_K), 120,
                         "the first 10 replayed")
        missing = Selection(prefix=prefix, only_missing=v2)
        assert await count_selected(settings, missing) == images - 10
        assert await count_selected(settings, Selection(prefix=prefix, only_missing=v1)) == 0
        assert await replay(settings, missing) == images - 10
        await wait_until(lambda: _equals(fetchval(settings, rows_of, v2, prefix), images * TOP_K), 120,
                         "every image replayed")
        elapsed = time.monotonic() - started

        # Everything again: the worker consumes it all (its group's offsets reach 2 x images), no row is added.
        assert await replay(settings, Selection(prefix=prefix)) == images
        await wait_until(lambda: _equals(committed(settings, f"{versions['name']}-v2", settings.replay_topic),
                                         2 * images), 120, "the second replay to be consumed")
        assert await fetchval(settings, rows_of, v2, prefix) == images * TOP_K
        assert await count_selected(settings, missing) == 0
        return elapsed

    replay_seconds = asyncio.run(scenario())
    with capsys.disabled():  # the figure, for pytest -s
        print(f"\nreplay: {images} images through {v2} in {replay_seconds:.1f}s "
              f"({images / replay_seconds:.1f} images/s, first replay command to last row)")

    # The comparison views against direct counts over prediction_results.
    direct = asyncio.run(fetch(settings, """
        SELECT o.image_key, o.category AS old, n.category AS new, o.confidence AS c_old, n.confidence AS c_new
        FROM prediction_results o JOIN prediction_results n USING (image_key)
        WHERE o.model = $1 AND n.model = $2 AND o.rank = 1 AND n.rank = 1 AND starts_with(image_key, $3)""",
        v1, v2, prefix))
    assert len(direct) == images
    agreeing = sum(r["old"] == r["new"] for r in direct)
    assert 0 < images - agreeing, "the perturbed head changed no top-1: the comparison would prove nothing"
    agreement = asyncio.run(fetch(settings, "SELECT * FROM model_agreement WHERE model_new = $1", v2))
    assert [(r["model_old"], r["images"], r["agreeing"]) for r in agreement] == [(v1, images, agreeing)]
    changes = asyncio.run(fetch(settings, "SELECT * FROM top1_changes WHERE model_new = $1", v2))
    assert {(r["image_key"], r["category_old"], r["category_new"]) for r in changes} == {
        (r["image_key"], r["old"], r["new"]) for r in direct if r["old"] != r["new"]}
    shifts = asyncio.run(fetch(settings, "SELECT * FROM confidence_shift_by_category WHERE model_new = $1", v2))
    for shift in shifts:
        mine = [r["c_new"] - r["c_old"] for r in direct if r["old"] == shift["category"]]
        assert shift["images"] == len(mine)
        assert float(shift["mean_confidence_shift"]) == pytest.approx(sum(mine) / len(mine), abs=1e-4)

    # Accuracy: each image's label class found at rank 1 / within the top 5, computed here from the rows.
    rows = asyncio.run(fetch(settings, """
        SELECT p.model, p.image_key, p.rank, p.class_index, i.label FROM prediction_results p
        JOIN image_info i USING (image_key) WHERE starts_with(p.image_key, $1)""", prefix))
    index_of = dict(LABELS.values())
    expected, hits = {}, {}
    for model in (v1, v2):
        hits[model] = {r["image_key"]: r["rank"] for r in rows if r["model"] == model
                       and r["class_index"] == index_of[r["label"]]}
        expected[model] = (images, sum(rank == 1 for rank in hits[model].values()), len(hits[model]))
    accuracy = asyncio.run(fetch(settings, "SELECT * FROM model_accuracy WHERE model = ANY($1)", [v1, v2]))
    assert {r["model"]: (r["images"], r["top1_correct"], r["top5_correct"]) for r in accuracy} == expected
    if squeezenet_weights() is not None:
        # The real weights know the original cat and espresso photos (the first copy of each).
        assert hits[v1][f"{prefix}n02124075/chelsea-0.jpg"] == hits[v1][f"{prefix}n07920052/coffee-0.jpg"] == 1

    # The report, as JSON, says what the views say; its plots are PNG files.
    for key, value in versions["stack"].env().items():
        monkeypatch.setenv(key, value)
    plots = versions["tmp"] / "plots"
    capsys.readouterr()
    assert cli.main(["report", "--format", "json", "--prefix", prefix, "--bucket", "minute",
                     "--plot", str(plots)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # stdout is the JSON alone; what was plotted goes to stderr
    assert "confidence_histograms.png" in captured.err
    assert [(r["model_old"], r["model_new"], r["images"], r["agreeing"]) for r in report["comparison"]] == [
        (v1, v2, images, agreeing)]
    assert {r["model"]: (r["images"], r["top1_correct"], r["top5_correct"]) for r in report["accuracy"]} == expected
    assert sum(r["images"] for r in report["throughput"]) == 2 * images
    assert {r["hostname"] for r in report["throughput"]} == {f"{versions['name']}-v1", f"{versions['name']}-v2"}
    top = [r for r in report["top_categories"] if r["model"] == v1]
    assert top[0]["images"] == max(sum(r["old"] == c for r in direct) for c in {r["old"] for r in direct})
    assert cli.main(["report", "--prefix", prefix, "--table", "accuracy", "--table", "comparison"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Accuracy per model version")
    assert [line.split()[:4] for line in text.splitlines() if line.startswith(f"{v1}  ")][-1] == [
        v1, v2, str(images), str(agreeing)]  # the comparison row, after the accuracy rows
    with capsys.disabled():
        print(text)
    written = sorted(p.name for p in plots.iterdir())
    assert {"confidence_histograms.png", "throughput.png"} <= set(written)
    for name in written:
        path = plots / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000
        with Image.open(path) as picture:
            picture.verify()


async def _equals(value, expected) -> bool:
    return await value == expected
