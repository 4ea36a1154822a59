"""Two (or more) versions of the worker side by side: the same stack, objects and settings, rounds interleaved.

    .venv/bin/python bench/compare_trees.py main HEAD [--keys 1500] [--rounds 3] [--workers 1]
    .venv/bin/python bench/compare_trees.py main WORKTREE      # the uncommitted tree as the second version
    .venv/bin/python bench/compare_trees.py HEAD HEAD,FAUST_LOOP=uvloop   # one version, two environments
    .venv/bin/python bench/compare_trees.py 9247edb HEAD --analyzers classify,faces --keys 600

A before/after figure from two `make bench` runs minutes apart measures the machine as much as the change: on
this shared 2-core machine one configuration read 131 and 221 img/s in one run. Here each git revision (or the
working tree), with the environment variables a
version names after commas, is extracted once and every round runs each version's worker on the streaming bench of
bench/run_all.py, in ABBA order so that drift falls on both; the report gives each round and the medians.

The workers import the extracted version through a sitecustomize shim that points this venv's editable install
(visionstream, visionstream.agents, visionstream.tables, visionstream.migrations) at it; the harness, the
stack and the schema are this checkout's.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

SHIM = '''\
import os
import sys

tree = os.environ.get("VS_COMPARE_TREE")
if tree:
    for finder in sys.meta_path:
        mapping = getattr(sys.modules.get(getattr(finder, "__module__", "")), "MAPPING", None)
        if isinstance(mapping, dict) and "visionstream" in mapping:
            mapping.update({"visionstream": f"{tree}/visionstream", "visionstream.agents": f"{tree}/agents",
                            "visionstream.tables": f"{tree}/tables", "visionstream.migrations": f"{tree}/migrations"})
'''


def extract(rev: str, into: Path) -> Path:
    """The files of ``rev`` (or of the working tree, tracked and untracked-not-ignored) under ``into``."""
    into.mkdir(parents=True)
    if rev == "WORKTREE":
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                               capture_output=True).stdout.split(b"\0")
        for name in filter(None, files):
            source, target = ROOT / name.decode(), into / name.decode()
            if source.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(source.read_bytes())
    else:
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(into, filter="data")
    return into


def split_version(version: str) -> tuple[str, dict[str, str]]:
    """"REV,NAME=VALUE,..." -> (REV, {NAME: VALUE})."""
    rev, *assignments = version.split(",")
    return rev, dict(a.split("=", 1) for a in assignments)


def describe(version: str) -> str:
    rev, env = split_version(version)
    what = "working tree" if rev == "WORKTREE" else subprocess.run(
        ["git", "log", "-1", "--format=%h %s", rev], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    return " ".join([*(f"{k}={v}" for k, v in env.items()), what])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revs", nargs="+", metavar="VERSION",
                        help="a git revision (WORKTREE: the uncommitted tree), then ,NAME=VALUE for its workers' env")
    parser.add_argument("--keys", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--analyzers", default="classify",
                        help="VISIONSTREAM_IMAGE_ANALYZERS of every version's workers, e.g. classify,faces (the "
                             "default configuration); an option, since a version's ,NAME=VALUE cannot hold a comma")
    args = parser.parse_args()
    from run_all import Bench, log, run_streaming, weights_file

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vs-compare-") as tmp_name:
        tmp = Path(tmp_name)
        trees: dict[str, Path] = {}
        for rev in dict.fromkeys(split_version(v)[0] for v in args.revs):
            trees[rev] = extract(rev, tmp / f"tree-{len(trees)}")
        (tmp / "shim").mkdir()
        (tmp / "shim" / "sitecustomize.py").write_text(SHIM)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp / "shim"), os.environ.get("PYTHONPATH")]))
        # `python -m faust` puts the working directory first on sys.path: not a checkout's, or its
        # visionstream would win over the shim's.
        os.chdir(tmp)
        weights, real = weights_file(tmp)
        bench = Bench(tmp, weights, real, args.keys)
        stack_env = bench.env
        bench.up()
        try:
            asyncio.run(bench.upload())
            for round_no in range(args.rounds):
                order = args.revs if round_no % 2 == 0 else list(reversed(args.revs))
                for rev in order:
                    tree, env = split_version(rev)
                    os.environ["VS_COMPARE_TREE"] = str(trees[tree])
                    # Last, over the stack's own worker environment (e.g. its PRODUCER_MAX_BATCH_SIZE=1).
                    bench.env = lambda overrides, env=env: {**stack_env(overrides), **env}  # type: ignore[method-assign]
                    log(f"round {round_no + 1}: {describe(rev)}")
                    result = asyncio.run(run_streaming(bench, args.workers, None, timeout=240,
                                                       image_analyzers=args.analyzers))
                    workers = [v for k, v in result["cpu_ms_per_image"].items() if k.startswith("worker")]
                    threads = result.get("thread_cpu_ms_per_image", {})
                    rows.append({"round": round_no + 1, "rev": rev, "img/s": result["img/s"],
                                 "worker_core_ms": round(sum(workers), 2),
                                 # a version without metrics.ThreadCpuCollector reports None here
                                 "outside_core_ms": round(threads["event_loop"] + threads["python_other"], 2)
                                 if threads else None,
                                 "threads": threads, "cpu_ms_per_image": result["cpu_ms_per_image"],
                                 "stages": result["stages"], "errors": result["errors"]})
        finally:
            os.environ.pop("VS_COMPARE_TREE", None)
            bench.down()
            os.chdir(ROOT)
    print(f"\n{args.workers} worker(s), {args.keys} keys, analyzers {args.analyzers}, {args.rounds} rounds (ABBA order)")
    print("medians; core-ms per image: all the worker's threads, and outside decode + model (event loop and other "
          "Python threads)")
    print(f"{'version':50s} {'img/s per round':28s} {'img/s':>7s} {'worker':>7s} {'outside':>8s}")
    medians = {}
    for rev in args.revs:
        mine = [r for r in rows if r["rev"] == rev]
        rate, cost = statistics.median(r["img/s"] for r in mine), statistics.median(r["worker_core_ms"] for r in mine)
        outside = [r["outside_core_ms"] for r in mine if r["outside_core_ms"] is not None]
        medians[rev] = (rate, cost)
        rounds = " ".join(f"{r['img/s']:6.1f}" for r in mine)
        print(f"{describe(rev)[:50]:50s} {rounds:28s} {rate:7.1f} {cost:7.2f} "
              f"{statistics.median(outside) if outside else float('nan'):8.2f}")
    base_rate, base_cost = medians[args.revs[0]]
    for rev in args.revs[1:]:
        rate, cost = medians[rev]
        print(f"{rev} / {args.revs[0]}: img/s x{rate / base_rate:.3f}, worker core-ms/image "
              f"{cost - base_cost:+.2f} ({cost / base_cost:.3f})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
