"""Transport benchmark (like `mapr perfproducer`): 50 KB frames from N cameras at 15 fps through the broker and
a pass-through consumer (consume, forward to an output topic); the largest N sustained without growing lag.

Pass-throughs, each run as its own process:

    python bench/transport.py faust worker -l warn --web-port P   # a Faust agent, visionstream's Faust settings
    python bench/transport.py raw                                  # plain aiokafka consumer + producer

Both read TRANSPORT_BOOTSTRAP, TRANSPORT_IN, TRANSPORT_OUT, TRANSPORT_GROUP from the environment. The driver
(:func:`find_max_cameras`, used by run_all.py) produces the frames at a paced rate and counts what arrives on
the output topic: lag = frames sent - frames received, counted message by message (Tansu's end offsets are
wrong for multi-record batches, so they are never used).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass, field

FRAME_BYTES = 50_000
FPS = 15


# Pass-throughs --------------------------------------------------------------------------------------------

def faust_main() -> None:
    import faust

    app = faust.App(
        os.environ["TRANSPORT_GROUP"],
        broker=f"kafka://{os.environ['TRANSPORT_BOOTSTRAP']}",
        store="memory://",
        autodiscover=False,
        topic_partitions=int(os.environ.get("TRANSPORT_PARTITIONS", "4")),
        datadir=os.environ.get("TRANSPORT_DATADIR", "/tmp/transport-faust"),
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
    )
    source = app.topic(os.environ["TRANSPORT_IN"], key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    sink = app.topic(os.environ["TRANSPORT_OUT"], key_type=bytes, value_type=bytes,
                     key_serializer="raw", value_serializer="raw")

    @app.agent(source, name="passthrough")
    async def passthrough(stream):  # type: ignore[no-untyped-def]
        async for key, value in stream.items():
            await sink.send(key=key, value=value)

    sys.argv = ["transport-faust", *sys.argv[2:]]
    app.main()


async def raw_main() -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    bootstrap = os.environ["TRANSPORT_BOOTSTRAP"]
    consumer = AIOKafkaConsumer(
        os.environ["TRANSPORT_IN"], bootstrap_servers=bootstrap, group_id=os.environ["TRANSPORT_GROUP"],
        auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=500,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=16 << 20)
    await producer.start()
    await consumer.start()
    try:
        while not consumer.assignment():
            await asyncio.sleep(0.1)
        print("READY", flush=True)
        out = os.environ["TRANSPORT_OUT"]
        async for message in consumer:
            await producer.send(out, message.value, key=message.key)
    finally:
        await consumer.stop()
        await producer.stop()


# Driver ---------------------------------------------------------------------------------------------------

@dataclass
class Step:
    cameras: int
    target_rate: float  # frames/s offered
    sent_rate: float  # frames/s actually produced
    received_rate: float  # frames/s arriving on the output topic during the step
    lag_end: int  # frames sent but not yet forwarded when the step ended
    lag_slope: float  # frames/s of lag growth over the second half of the step
    drained_s: float | None  # seconds until the lag was 0 after the step (None: not within the limit)
    sustained: bool = False
    samples: list[tuple[float, int, int]] = field(default_factory=list, repr=False)


class Driver:
    """Paced frame producer and output counter, in the benchmark's own process."""

    def __init__(self, bootstrap: str, in_topic: str, out_topic: str) -> None:
        self.bootstrap, self.in_topic, self.out_topic = bootstrap, in_topic, out_topic
        self.sent = 0
        self.received = 0
        self._payload = os.urandom(FRAME_BYTES)

    async def __aenter__(self) -> Driver:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5,
                                         max_batch_size=1 << 20, max_request_size=16 << 20)
        self.consumer = AIOKafkaConsumer(self.out_topic, bootstrap_servers=self.bootstrap, group_id=None,
                                         auto_offset_reset="earliest", fetch_max_bytes=64 << 20,
                                         max_partition_fetch_bytes=16 << 20)
        await self.producer.start()
        await self.consumer.start()
        self._counting = asyncio.create_task(self._count())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._counting.cancel()
        await asyncio.gather(self._counting, return_exceptions=True)
        await self.consumer.stop()
        await self.producer.stop()

    async def _count(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=200, max_records=10_000)
            self.received += sum(len(records) for records in batches.values())

    async def step(self, cameras: int, seconds: float, drain_limit: float = 25.0) -> Step:
        rate = cameras * FPS
        start = time.monotonic()
        sent0, received0 = self.sent, self.received
        samples: list[tuple[float, int, int]] = []
        pending: list[asyncio.Future] = []
        next_sample = 0.0
        frame = 0
        while (now := time.monotonic() - start) < seconds:
            due = int(now * rate) + 1
            while frame < due:
                camera = frame % cameras
                pending.append(await self.producer.send(self.in_topic, self._payload, key=b"cam-%04d" % camera))
                frame += 1
                self.sent += 1
            if len(pending) > 2000:
                await asyncio.gather(*pending)
                pending.clear()
            if now >= next_sample:
                samples.append((now, self.sent - sent0, self.received - received0))
                next_sample += 0.5
            await asyncio.sleep(0.005)
        await asyncio.gather(*pending)
        elapsed = time.monotonic() - start
        samples.append((elapsed, self.sent - sent0, self.received - received0))
        lag_end = self.sent - self.received
        half = [s for s in samples if s[0] >= seconds / 2]
        lag_slope = 0.0
        if len(half) >= 2:
            (t0, s0, r0), (t1, s1, r1) = half[0], half[-1]
            lag_slope = ((s1 - r1) - (s0 - r0)) / max(t1 - t0, 1e-6)
        step = Step(cameras, rate, (self.sent - sent0) / elapsed, (self.received - received0) / elapsed,
                    lag_end, lag_slope, None, samples=samples)
        drain_start = time.monotonic()
        while self.received < self.sent and time.monotonic() - drain_start < drain_limit:
            await asyncio.sleep(0.1)
        if self.received >= self.sent:
            step.drained_s = time.monotonic() - drain_start
        # Sustained: the offered rate was produced, and the lag stayed bounded (under 1 s of frames at the
        # end, not growing by more than 5% of the rate over the second half of the step).
        step.sustained = (step.sent_rate >= 0.95 * rate and lag_end <= rate * 1.0 and lag_slope <= 0.05 * rate)
        return step


async def find_max_cameras(bootstrap: str, in_topic: str, out_topic: str, seconds: float = 8.0,
                           start: int = 8, ceiling: int = 512, log=print) -> tuple[int, list[Step]]:
    """Double N while sustained, then bisect to within ~15%; return the largest sustained N and every step."""
    steps: list[Step] = []
    async with Driver(bootstrap, in_topic, out_topic) as driver:
        await driver.step(2, 2.0)  # warm-up: connections, first fetches
        lo, hi, n = 0, None, start
        while True:
            result = await driver.step(n, seconds)
            steps.append(result)
            log(f"    N={n:4d} cameras: offered {result.target_rate:7.0f} fr/s, sent {result.sent_rate:7.0f}, "
                f"forwarded {result.received_rate:7.0f}, lag at end {result.lag_end:6d}, "
                f"lag slope {result.lag_slope:+7.1f} fr/s -> {'ok' if result.sustained else 'FALLS BEHIND'}")
            if result.drained_s is None:
                await asyncio.sleep(5)
            if result.sustained:
                lo = n
            else:
                hi = n
            if hi is None:
                if n >= ceiling:
                    break
                n = min(n * 2, ceiling)
            else:
                if hi - lo <= max(1, int(lo * 0.15)):
                    break
                n = (lo + hi) // 2
    return lo, steps


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "faust":
        faust_main()
    elif mode == "raw":
        asyncio.run(raw_main())
    else:
        sys.exit("usage: transport.py faust worker ... | transport.py raw")
