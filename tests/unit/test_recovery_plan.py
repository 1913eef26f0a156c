"""Recovery's decision, as a pure function: :func:`halodb.engine.recovery.plan` over what each
partition's tree and log hold, with no file in sight (the rules of design.md, "Recovery")."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halodb import format as fmt
from halodb.engine.recovery import LogState, Plan, plan
from halodb.errors import CorruptionError
from halodb.wal import Record

MAX_KEY = 512


def put(seq: int, key: bytes = b"k") -> Record:
    return Record(fmt.REC_WRITE, seq, 0, [(key, b"v")], ())


def part(seq: int, partitions: tuple[int, ...]) -> Record:
    return Record(fmt.REC_BATCH, seq, 0, [(b"b", b"v")], partitions)


def close(seq: int) -> Record:
    return Record(fmt.REC_CLOSE, seq, 0, [], ())


def state(index: int, records: list[Record], flushed: int = 0) -> LogState:
    return LogState(index, flushed, records, f"p{index:03d}.wal", f"p{index:03d}.tree")


def seqs(decided: Plan) -> list[list[int]]:
    return [[r.seq for r in records] for records in decided.replay]


def test_every_record_newer_than_its_tree_applies_and_close_records_apply_nothing() -> None:
    decided = plan([state(0, [put(1), put(2), close(3)], flushed=1), state(1, [put(4)])], MAX_KEY)
    assert seqs(decided) == [[2], [4]]
    assert (decided.cut, decided.dropped, decided.next_seq) == ([], 0, 5)


def test_the_next_sequence_number_passes_what_the_trees_hold() -> None:
    assert plan([state(0, [], flushed=41), state(1, [put(7)])], MAX_KEY).next_seq == 42


def test_a_batch_with_every_part_logged_applies_everywhere() -> None:
    decided = plan([state(0, [part(5, (0, 1))]), state(1, [part(5, (0, 1))])], MAX_KEY)
    assert seqs(decided) == [[5], [5]] and decided.dropped == 0


def test_a_batch_part_held_by_a_tree_counts_as_present() -> None:
    decided = plan([state(0, [part(5, (0, 1)), put(6)]), state(1, [], flushed=5)], MAX_KEY)
    assert seqs(decided) == [[5, 6], []]


def test_a_missing_part_drops_the_batch_and_cuts_the_log_after_it() -> None:
    decided = plan([state(0, [put(1), part(2, (0, 1)), put(3)]), state(1, [put(4)])], MAX_KEY)
    assert seqs(decided) == [[1], [4]]
    assert (decided.cut, decided.dropped) == ([0], 2)


def test_a_cut_takes_another_batch_and_cuts_its_other_partitions_in_turn() -> None:
    """Partition 0 loses batch 2's sibling part, so its batch 3 goes too, and with it partition
    1's part of batch 3 and everything after it there."""
    logs = [
        state(0, [part(2, (0, 2)), part(3, (0, 1))]),
        state(1, [put(1), part(3, (0, 1)), put(4)]),
        state(2, []),
    ]
    decided = plan(logs, MAX_KEY)
    assert seqs(decided) == [[], [1], []]
    assert (decided.cut, decided.dropped) == ([0, 1], 4)


def test_a_batch_in_one_tree_that_cannot_apply_elsewhere_is_damage() -> None:
    logs = [state(0, [part(2, (0, 1, 2))]), state(1, [], flushed=2), state(2, [])]
    with pytest.raises(CorruptionError, match=r"is in the tree \(or run\) of partition 1"):
        plan(logs, MAX_KEY)


@pytest.mark.parametrize(
    ("records", "flushed", "message"),
    [
        ([put(1, b"k" * (MAX_KEY + 1))], 0, "over the limits"),
        ([part(1, (1,))], 0, "names partitions"),
        ([part(1, (0, 9))], 0, "names partitions"),
        ([], fmt.SEQ_LIMIT, "impossible number"),
    ],
)
def test_records_no_store_writes_are_damage(
    records: list[Record], flushed: int, message: str
) -> None:
    with pytest.raises(CorruptionError, match=message):
        plan([state(0, records, flushed), state(1, [])], MAX_KEY)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_whatever_it_keeps_is_a_prefix_of_each_log_with_every_batch_whole(
    data: st.DataObject,
) -> None:
    """For any logs of up to three partitions: each partition replays a prefix of its pending
    records, and a batch kept anywhere is kept in every partition whose log holds a part."""
    n = data.draw(st.integers(1, 3))
    logs: list[list[Record]] = [[] for _ in range(n)]
    for seq in range(1, data.draw(st.integers(0, 12)) + 1):
        touched = tuple(sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1))))
        if len(touched) == 1:
            logs[touched[0]].append(put(seq))
            continue
        for index in touched:
            if data.draw(st.booleans()) or data.draw(st.booleans()):  # a part may be lost
                logs[index].append(part(seq, touched))
    decided = plan([state(i, records) for i, records in enumerate(logs)], MAX_KEY)
    kept: dict[int, set[int]] = {}
    for index, (records, replayed) in enumerate(zip(logs, decided.replay, strict=True)):
        assert replayed == records[: len(replayed)]
        for record in replayed:
            kept.setdefault(record.seq, set()).add(index)
    for index, records in enumerate(logs):
        for record in records:
            if record.seq in kept and record.rtype == fmt.REC_BATCH:
                assert index in kept[record.seq]
                assert set(record.partitions) == kept[record.seq]
    assert decided.dropped == sum(len(r) for r in logs) - sum(len(r) for r in decided.replay)


def test_logs_out_of_partition_order_are_refused() -> None:
    """``plan`` reads ``logs[i]`` as partition ``i``'s: a caller's mix-up is refused, never
    planned on."""
    with pytest.raises(ValueError, match="partition order"):
        plan([state(1, []), state(0, [])], MAX_KEY)
