"""Live-table counts applied once per source record (tables/partitions.py): pure logic on a dict."""

from __future__ import annotations

from types import SimpleNamespace

from visionstream.tables.partitions import add_once, added_once, count_of, counts


def event(offset: int, partition: int = 0) -> SimpleNamespace:
    return SimpleNamespace(message=SimpleNamespace(offset=offset, partition=partition))


class Table(dict):
    """A Faust table's mapping behaviour with ``default=list``."""

    def __missing__(self, key):
        return []


def test_an_event_replayed_after_a_crash_is_not_counted_again():
    table = Table()
    assert [add_once(table, "cat/0", event(o)) for o in (0, 1, 2)] == [True, True, True]
    # Redelivered from the last commit (offset 1) after a SIGKILL: 1 and 2 are in the recovered value already.
    assert [add_once(table, "cat/0", event(o)) for o in (1, 2, 3)] == [False, False, True]
    assert table["cat/0"] == [4, 3]  # count and watermark in the one value: one changelog record per update
    assert counts(table) == {"cat/0": 4}


def test_amounts_and_keys_are_independent():
    table = Table()
    add_once(table, "m/faces/0", event(5), 3)
    add_once(table, "m/images/0", event(5))
    assert not add_once(table, "m/faces/0", event(5), 3)
    add_once(table, "m/faces/0", event(6), 2)
    assert counts(table) == {"m/faces/0": 5, "m/images/0": 1}


def test_a_value_from_before_watermarks_keeps_its_count():
    assert count_of(7) == 7 and count_of([]) == 0 and count_of(None) == 0 and count_of([3, 9]) == 3
    assert added_once(7, event(0)) == [8, 0]  # nothing known to be applied: counted
    assert added_once([3, 9], event(9)) is None and added_once([3, 9], event(10)) == [4, 10]


def test_a_counted_tables_value_comes_back_from_its_changelog():
    """What a recovering worker reads: Faust's own value serialisation of the table, both ways."""
    import faust

    from visionstream.tables.partitions import counted_table

    app = faust.App("counts-test", broker="memory://", store="memory://")
    table = counted_table(app, "counts", 2)
    serializers = app.serializers
    stored = serializers.dumps_value(table.value_type, [3, 9], serializer="json")
    assert serializers.loads_value(table.value_type, stored, serializer="json") == [3, 9]
    old = serializers.dumps_value(int, 7, serializer="json")  # a count written before offsets were kept
    assert count_of(serializers.loads_value(table.value_type, old, serializer="json")) == 7
