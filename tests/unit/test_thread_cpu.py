"""The per-role thread CPU counters (metrics.ThreadCpuCollector) on this process's real threads (Linux)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from visionstream.metrics import ThreadCpuCollector, pool_thread_prefix, thread_role

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")


def by_role(collector: ThreadCpuCollector) -> dict[str, float]:
    (family,) = collector.collect()
    return {sample.labels["role"]: sample.value for sample in family.samples}


def spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_thread_roles_follow_the_worker_pools_names():
    assert thread_role("MainThread") == "event_loop"
    assert thread_role("vs-classify-decode_1") == "decode"
    assert thread_role("vs-frames-model_0") == "model"
    assert thread_role(f"{pool_thread_prefix('faces', 'decode')}_0") == "decode"
    assert thread_role("ThreadPoolExecutor-0_0") == "python_other"


def test_a_decode_threads_cpu_is_counted_as_decode_and_kept_after_it_ends():
    collector = ThreadCpuCollector()
    started, release = threading.Event(), threading.Event()

    def decode() -> None:
        spin(0.3)
        started.set()
        release.wait()

    thread = threading.Thread(target=decode, name="vs-test-decode_0")
    before = by_role(collector)
    thread.start()
    started.wait()
    during = by_role(collector)
    release.set()
    thread.join()
    after = by_role(collector)
    assert during["decode"] - before["decode"] >= 0.2  # 0.3 s of CPU, counted in clock ticks
    assert during["model"] == before["model"]
    assert after["decode"] >= during["decode"]  # the thread is gone; its seconds are not
