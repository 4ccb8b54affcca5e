"""The owner's bell (store/log.py, writer.py): the entries other replicas append reach the
owner with the id before each, and it applies them without reading the log only when
they follow what it applied without a gap."""

from __future__ import annotations

import orjson

from service.store import log


def _item(prev: str, entry_id: str) -> log.BellItem:
    fields = ["op", "learn", "kind", "one", "samples", "[[[1],0]]", "origin", "r1", "req", entry_id]
    return log.parse_bell_item(orjson.dumps([prev, entry_id, *fields]))


def test_an_item_carries_its_entry() -> None:
    item = _item("5-0", "6-0")
    assert item.prev == "5-0"
    assert (item.entry.id, item.entry.op, item.entry.kind, item.entry.samples) == (
        "6-0",
        log.LEARN,
        "one",
        [[[1], 0]],
    )
    assert item.entry.origin == "r1" and item.entry.idempotency_key is None


def test_items_that_follow_the_last_applied_entry_are_used() -> None:
    items = [_item("5-0", "6-0"), _item("6-0", "7-0")]
    assert [e.id for e in log.follow_bell(items, "5-0") or []] == ["6-0", "7-0"]


def test_items_already_applied_are_skipped() -> None:
    """The owner's own group read them with its append: they come again on the bell."""
    items = [_item("5-0", "6-0"), _item("6-0", "7-0"), _item("7-0", "8-0")]
    assert [e.id for e in log.follow_bell(items, "7-0") or []] == ["8-0"]
    assert log.follow_bell(items, "8-0") == []


def test_a_gap_means_reading_the_log() -> None:
    """An entry the bell did not carry (the owner's own rollback record, an item
    dropped by the cap) sits between: the log must be read."""
    assert log.follow_bell([_item("6-0", "7-0")], "5-0") is None
    assert log.follow_bell([_item("5-0", "6-0"), _item("6-5", "7-0")], "5-0") is None


def test_an_empty_log_before_the_entry_means_nothing_was_missed() -> None:
    """Only applied entries are trimmed: an entry appended to an empty log is next."""
    assert [e.id for e in log.follow_bell([_item("", "9-0")], "5-0") or []] == ["9-0"]
    assert log.follow_bell([_item("5-0", "6-0"), _item("", "9-0")], "5-0") is None
