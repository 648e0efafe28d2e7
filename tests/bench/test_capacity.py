"""DynamoDB item sizes and capacity units follow DynamoDB's documented rules."""

import pytest

from bench import capacity
from bench.capacity import Index, TableShape


@pytest.mark.parametrize("number, size", [
    ("0", 1), ("7", 2), ("12", 2), ("123", 3), ("1234", 3), ("-1234", 3), ("1000", 2),
    ("0.001", 2), ("1.5e10", 2), ("12345678901234567890", 11),
])
def test_number_size_is_one_byte_per_two_significant_digits_plus_one(number, size):
    assert capacity.number_size(number) == size


def test_item_size_counts_names_and_values():
    item = {"pk": {"S": "abc"}, "n": {"N": "12"}, "ok": {"BOOL": True}}
    # pk: 2 + 3, n: 1 + 2, ok: 2 + 1
    assert capacity.item_size(item) == 11


def test_lists_and_maps_cost_three_bytes_plus_one_per_element():
    assert capacity.value_size({"L": []}) == 3
    assert capacity.value_size({"L": [{"S": "ab"}, {"N": "1"}]}) == 3 + (1 + 2) + (1 + 2)
    assert capacity.value_size({"M": {"k": {"S": "v"}}}) == 3 + 1 + 1 + 1


def test_utf8_strings_count_bytes_not_characters():
    assert capacity.value_size({"S": "é€"}) == 5


def test_write_and_read_units_round_up_per_kb_and_per_4kb():
    assert capacity.write_units(1) == 1
    assert capacity.write_units(1024) == 1
    assert capacity.write_units(1025) == 2
    assert capacity.write_units(1025, transactional=True) == 4
    assert capacity.read_units(4096) == 1
    assert capacity.read_units(4097) == 2
    assert capacity.read_units(4097, consistent=False) == 1
    assert capacity.read_units(0, consistent=False) == 0.5
    assert capacity.read_units(10, transactional=True) == 2


SHAPE = TableShape("t", ("pk",), (Index("byStatus", ("status",), "ALL"),
                                  Index("byOwner", ("owner",), "KEYS_ONLY")))


def test_an_item_entering_changing_and_leaving_a_sparse_index():
    base = {"pk": {"S": "a"}}
    enter = capacity.index_writes(SHAPE, base, dict(base, status={"S": "open"}))
    assert [(w.index, w.kind, w.writes) for w in enter] == [("byStatus", "enter", 1)]
    projected = capacity.index_writes(SHAPE, dict(base, status={"S": "open"}),
                                      dict(base, status={"S": "open"}, seq={"N": "2"}))
    assert [(w.index, w.kind) for w in projected] == [("byStatus", "update")]
    rekey = capacity.index_writes(SHAPE, dict(base, status={"S": "open"}), dict(base, status={"S": "closed"}))
    assert [(w.kind, w.writes, w.units) for w in rekey] == [("rekey", 2, 2)]
    leave = capacity.index_writes(SHAPE, dict(base, status={"S": "open"}), base)
    assert [(w.kind, w.writes) for w in leave] == [("leave", 1)]


def test_keys_only_index_ignores_changes_of_other_attributes():
    before = {"pk": {"S": "a"}, "owner": {"S": "x"}, "seq": {"N": "1"}}
    after = dict(before, seq={"N": "2"})
    assert [w.index for w in capacity.index_writes(SHAPE, before, after)] == []


def test_a_failed_condition_costs_the_existing_item_and_writes_no_index():
    old = {"pk": {"S": "a"}, "status": {"S": "open"}, "blob": {"S": "x" * 3000}}
    units, index = capacity.write_cost(SHAPE, old, old, succeeded=False)
    assert (units, index) == (3, [])
    units, _ = capacity.write_cost(SHAPE, None, None, succeeded=False, transactional=True)
    assert units == 2
