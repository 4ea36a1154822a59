"""What the live tables share: counts applied once per source record, kept per source partition, and the
partitions a worker serves.

Faust writes a table entry to the changelog partition of the event being processed, so a table fed from a
topic not keyed by what it counts keeps each count per source partition ("<what>/<partition>") and its page
sums them; with several workers each one serves the partitions it holds.

Exactly once per result: two kinds of repeat reach a table, and each value ``[count, offset, inputs]`` (JSON)
holds what skips both, so one changelog record moves the count and what it has applied together.
- The table's own replays: after a SIGKILL or a rebalance Faust hands the counting worker the records after its
  last commit again, and the table (recovered from its changelog) has counted some of them already. ``offset``
  is the highest source offset applied; each key is fed from one source partition only (keyed per partition
  here, or by a topic keyed by what it counts), whose offsets only grow, so an event at or below it is skipped.
  Measured before this: 6 SIGKILLs during 1,500 keys left a recovered category table at 1,751 against
  PostgreSQL's 1,500.
- A result topic's own repeats: the topic is at-least-once (no transactions on Tansu), so a worker that takes
  over an input partition publishes again the results the one before it published but did not commit (142 of
  1,342 records in test_chaos.py). Each result record names its input (``source``: input partition, offset,
  and its place among that input's records on the topic), and ``inputs`` keeps, per input partition, the
  positions applied: the last ``kept`` of them, and a watermark below which every position counts as applied.
  A result is published out of order only within the batches in flight (core/batching.py: batches finish and
  ack in order, and a batch takes its slot only when one before it finished), so a result not yet applied has
  at most ``batches_in_flight * batch_size`` positions of its input partition applied above it per worker that
  published past it; ``kept`` is four times that (inputs_kept), so it never falls below the watermark.
  What is kept is per table key, so a re-published result is skipped when it lands on the key of its first
  publication: the same model gives the same category; a frame re-processed late may be skipped as lagging
  where its first result was processed, and is then counted under both outcomes, like its two records on the
  topic (PostgreSQL keeps the first).
"""

from __future__ import annotations

import bisect
from datetime import datetime, timezone
from typing import Any

from visionstream.core.records import RECORDS_PER_INPUT

Counted = list  # [count, highest source offset applied, inputs applied]: a table value (JSON) of these tables


def inputs_kept(settings: Any) -> int:
    """Positions kept per input partition above its watermark: the out-of-order window of four publishers in a
    row. A position is input offset * RECORDS_PER_INPUT + the record's place among its input's records."""
    return 4 * settings.batches_in_flight * max(settings.batch_size, settings.face_batch_size)


def counted_table(app: Any, name: str, partitions: int) -> Any:
    """A table of ``add_once`` counts: str keys, ``[count, offset, inputs]`` values (JSON, the app's default).
    No value_type: Faust decodes a changelog value of any other type than a Model or a scalar through
    ``type.from_data``, which ``list`` lacks, and the recovering worker then dropped every record (found by
    test_chaos.py)."""
    return app.Table(name, key_type=str, default=list, partitions=partitions)


def count_of(value: Counted | int | None) -> int:
    """The count in a table value (empty: nothing counted; a bare int: written before offsets were kept)."""
    if not value:
        return 0
    return value if isinstance(value, int) else value[0]


def added_once(value: Counted | int | None, event: Any, kept: int, amount: int = 1) -> Counted | None:
    """``value`` with ``amount`` added for ``event``, or None when ``event`` (its source offset, or the input
    its record names) is applied in it already. ``kept``: positions kept per input partition (inputs_kept)."""
    offset = event.message.offset
    applied = -1 if not value or isinstance(value, int) else value[1]
    if offset <= applied:
        return None
    inputs = {name: [mark, list(above)] for name, (mark, above) in value[2].items()} \
        if isinstance(value, list) and len(value) > 2 else {}
    if (source := getattr(event.value, "source", None)) is not None:  # None: a record from before v2
        partition, input_offset, place = source
        mark, above = inputs.setdefault(str(partition), [-1, []])
        position = input_offset * RECORDS_PER_INPUT + place
        at = bisect.bisect_left(above, position)
        if position <= mark or (at < len(above) and above[at] == position):
            return None  # a re-published result: applied when it was first published
        above.insert(at, position)
        if len(above) > kept:
            inputs[str(partition)] = [above[0], above[1:]]
    return [count_of(value) + amount, offset, inputs]


def add_once(table: Any, key: str, event: Any, kept: int, amount: int = 1) -> bool:
    """Add ``amount`` to ``table[key]`` unless ``event`` has been applied to it already; whether it was added.
    The table is a ``counted_table``."""
    value = added_once(table[key], event, kept, amount)
    if value is not None:
        table[key] = value
    return value is not None


def counts(table: Any) -> dict[str, int]:
    """Every key's count."""
    return {key: count_of(value) for key, value in table.items()}


def window_label(window_start: float, label_format: str) -> str:
    """A window's start in UTC, as ``label_format`` (strftime) writes it."""
    return datetime.fromtimestamp(window_start, tz=timezone.utc).strftime(label_format)


def window_counts(windowed: Any, label_format: str) -> dict[str, dict[str, int]]:
    """Every kept window's count of a windowed table, ``{key: {window start (UTC, label_format): count}}``. Read
    from the underlying table: faust's delta()/current() need a stream event, which a web request does not
    have. Its keys are (key, (window_start, window_end))."""
    out: dict[str, dict[str, int]] = {}
    for (key, (window_start, _)), value in windowed.table.items():
        out.setdefault(key, {})[window_label(window_start, label_format)] = count_of(value)
    return out


def per_partition(key: str, event: Any) -> str:
    """The table key of ``key`` counted from ``event``'s partition."""
    return f"{key}/{event.message.partition}"


def without_partition(table_key: str) -> str:
    """What ``per_partition`` counted: the key before its last "/" (a partition never holds one)."""
    return table_key.rpartition("/")[0]


def served_partitions(app: Any, table: Any) -> list[int]:
    """The partitions of ``table`` this worker holds."""
    changelog = table.changelog_topic.get_topic_name()
    return sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == changelog)
