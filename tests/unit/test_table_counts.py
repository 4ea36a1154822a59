"""Live-table counts applied once per source record (tables/partitions.py): pure logic on a dict."""

from __future__ import annotations

from types import SimpleNamespace

from visionstream.core.records import RECORDS_PER_INPUT
from visionstream.tables.partitions import add_once, added_once, count_of, counts


KEPT = 4


def event(offset: int, partition: int = 0, source: list[int] | None = None) -> SimpleNamespace:
    """A table's event: its own offset on the result topic, and the input its record names (None: a v1 record)."""
    return SimpleNamespace(message=SimpleNamespace(offset=offset, partition=partition),
                           value=SimpleNamespace(source=source))


class Table(dict):
    """A Faust table's mapping behaviour with ``default=list``."""

    def __missing__(self, key):
        return []


def test_an_event_replayed_after_a_crash_is_not_counted_again():
    table = Table()
    assert [add_once(table, "cat/0", event(o), KEPT) for o in (0, 1, 2)] == [True, True, True]
    # Redelivered from the last commit (offset 1) after a SIGKILL: 1 and 2 are in the recovered value already.
    assert [add_once(table, "cat/0", event(o), KEPT) for o in (1, 2, 3)] == [False, False, True]
    assert table["cat/0"] == [4, 3, {}]  # count and watermark in the one value: one changelog record per update
    assert counts(table) == {"cat/0": 4}


def test_amounts_and_keys_are_independent():
    table = Table()
    add_once(table, "m/faces/0", event(5), KEPT, 3)
    add_once(table, "m/images/0", event(5), KEPT)
    assert not add_once(table, "m/faces/0", event(5), KEPT, 3)
    add_once(table, "m/faces/0", event(6), KEPT, 2)
    assert counts(table) == {"m/faces/0": 5, "m/images/0": 1}


def test_a_value_from_before_watermarks_keeps_its_count():
    assert count_of(7) == 7 and count_of([]) == 0 and count_of(None) == 0 and count_of([3, 9]) == 3
    assert added_once(7, event(0), KEPT) == [8, 0, {}]  # nothing known to be applied: counted
    assert added_once([3, 9], event(9), KEPT) is None and added_once([3, 9], event(10), KEPT) == [4, 10, {}]
    assert added_once([3, 9], event(10, source=[2, 40, 0]), KEPT) == [4, 10, {"2": [-1, [40 * RECORDS_PER_INPUT]]}]


def test_a_result_re_published_by_a_takeover_is_not_counted_again():
    """The takeover publishes again what the victim published after its last commit: new offsets on the
    result topic, the same inputs."""
    table = Table()
    first = [add_once(table, "cat/0", event(o, source=[1, 100 + o, 0]), KEPT) for o in range(3)]
    again = [add_once(table, "cat/0", event(3 + o, source=[1, 100 + o, 0]), KEPT) for o in range(4)]
    assert first == [True, True, True] and again == [False, False, False, True]
    assert counts(table) == {"cat/0": 4}
    # Another input partition's offset 100 is another input.
    assert add_once(table, "cat/0", event(7, source=[2, 100, 0]), KEPT)


def test_results_of_one_input_count_once_each_by_their_place():
    table = Table()
    added = [add_once(table, "alice", event(o, source=[0, 9, place]), KEPT)
             for o, place in enumerate([0, 1, 0, 1, 2])]
    assert added == [True, True, False, False, True] and counts(table) == {"alice": 3}


def test_a_result_published_out_of_order_is_counted_within_the_kept_window():
    """The victim published inputs 11-14 (a later batch) but not 10 (its earlier batch in flight); the
    takeover publishes 10 to 14 again: 10 counts, the rest do not, though 10 is below what is applied."""
    table = Table()
    for o, input_offset in enumerate([11, 12, 13, 14]):
        add_once(table, "cat/0", event(o, source=[0, input_offset, 0]), KEPT)
    again = [add_once(table, "cat/0", event(4 + i, source=[0, 10 + i, 0]), KEPT) for i in range(5)]
    assert again == [True, False, False, False, False] and counts(table) == {"cat/0": 5}
    # Bounded: KEPT positions above the watermark, the rest below it (and so applied).
    watermark, above = table["cat/0"][2]["0"]
    assert len(above) == KEPT and watermark == 10 * RECORDS_PER_INPUT
    # Below the watermark counts as applied: a result is never more than KEPT positions late.
    assert not add_once(table, "cat/0", event(9, source=[0, 3, 0]), KEPT)


def test_a_counted_tables_value_comes_back_from_its_changelog():
    """What a recovering worker reads: Faust's own value serialisation of the table, both ways."""
    import faust

    from visionstream.tables.partitions import counted_table

    app = faust.App("counts-test", broker="memory://", store="memory://")
    table = counted_table(app, "counts", 2)
    serializers = app.serializers
    value = [3, 9, {"1": [-1, [40 * RECORDS_PER_INPUT]]}]
    stored = serializers.dumps_value(table.value_type, value, serializer="json")
    assert serializers.loads_value(table.value_type, stored, serializer="json") == value
    old = serializers.dumps_value(int, 7, serializer="json")  # a count written before offsets were kept
    assert count_of(serializers.loads_value(table.value_type, old, serializer="json")) == 7


def test_a_result_record_naming_no_valid_input_does_not_decode():
    """``source`` becomes table state: a forged one is refused at decode (a dead letter), an absent one is a
    record from before it was kept."""
    import json

    import pytest

    from visionstream.core.records import Prediction

    record = dict(image_key="k", model="m@1", category="cat", confidence=0.5, top_k=[], hostname="h", time=1.0)
    assert Prediction.loads(json.dumps(record).encode(), serializer="json").source is None
    assert Prediction(**record, source=[1, 2, 0]).source == [1, 2, 0]
    for forged in ([1, 2], [1, "2", 0], [-1, 2, 0], [1, 2, RECORDS_PER_INPUT], {"p": 1}, [1, 2.0, 0], [True, 2, 0]):
        with pytest.raises(ValueError, match="source"):
            Prediction(**record, source=forged)
