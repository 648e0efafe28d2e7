"""DynamoDB item sizes and capacity units, from the items themselves (no AWS call).

The rules are DynamoDB's (Developer Guide, "Item sizes and formats" and
"Read/write capacity mode"), applied to DynamoDB-JSON items as they travel
on the wire:

* An item's size is the sum, over its attributes, of the UTF-8 length of
  the attribute name plus the size of the value.
* String: UTF-8 bytes. Binary: raw bytes. Number: 1 byte per two
  significant digits, plus 1. Boolean and Null: 1 byte. Sets: the sum of
  their elements. List and Map: 3 bytes, plus per element 1 byte and the
  element's size (a map element also counts its name).
* A standard write costs 1 WRU per started KB of the larger of the item
  before and after the write (1 minimum); a transactional write costs 2.
  A write whose condition fails still costs the size of the existing item
  (1 minimum), and writes no index.
* A strongly consistent read costs 1 RRU per started 4 KB, an eventually
  consistent one half that; a transactional read 2. A Query or Scan sums
  the sizes of every item it evaluated (before any filter or projection)
  and rounds once per page.
* A global secondary index is written when an item enters it (1 write of
  the new entry), leaves it (1 write of the old entry), changes its index
  key (2 writes: delete and put) or changes a projected attribute (1
  write). Index writes cost 1 WRU per started KB of the index entry.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Mapping, Sequence

Item = Mapping[str, Any]

KB = 1024
READ_UNIT_BYTES = 4 * KB


def number_size(text: str) -> int:
    """Bytes of a DynamoDB number: one per two significant digits, plus one."""
    digits = text.strip().lstrip("+-").lower()
    if "e" in digits:
        digits = digits.split("e", 1)[0]
    digits = digits.replace(".", "").strip("0")
    return (len(digits) + 1) // 2 + 1 if digits else 1


def _binary_len(value: Any) -> int:
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    try:
        return len(base64.b64decode(value, validate=True))
    except (ValueError, TypeError):
        return len(str(value).encode())


def value_size(value: Mapping[str, Any]) -> int:
    """Bytes of one DynamoDB-JSON attribute value, e.g. ``{"S": "abc"}``."""
    ((kind, raw),) = value.items()
    if kind == "S":
        return len(raw.encode("utf-8"))
    if kind == "N":
        return number_size(raw)
    if kind == "B":
        return _binary_len(raw)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode("utf-8")) for s in raw)
    if kind == "NS":
        return sum(number_size(n) for n in raw)
    if kind == "BS":
        return sum(_binary_len(b) for b in raw)
    if kind == "L":
        return 3 + sum(1 + value_size(v) for v in raw)
    if kind == "M":
        return 3 + sum(1 + len(k.encode("utf-8")) + value_size(v) for k, v in raw.items())
    raise ValueError(f"unknown DynamoDB type {kind!r}")


def item_size(item: Item | None) -> int:
    """Bytes of a DynamoDB-JSON item (0 for no item)."""
    if not item:
        return 0
    return sum(len(name.encode("utf-8")) + value_size(v) for name, v in item.items())


def write_units(size: int, transactional: bool = False) -> int:
    """WRU of writing an item of ``size`` bytes (1 KB units, 1 minimum)."""
    units = max(1, math.ceil(size / KB))
    return 2 * units if transactional else units


def read_units(size: int, consistent: bool = True, transactional: bool = False) -> float:
    """RRU of reading ``size`` bytes (4 KB units, 1 minimum; half when eventually consistent)."""
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    if transactional:
        return 2.0 * units
    return float(units) if consistent else units / 2.0


@dataclass(frozen=True)
class Index:
    """A global secondary index: its key attributes and its projection."""

    name: str
    keys: tuple[str, ...]
    projection: str = "ALL"  # ALL, KEYS_ONLY or INCLUDE
    include: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableShape:
    """What the arithmetic needs of a table: its key and its global secondary indexes."""

    name: str
    keys: tuple[str, ...]
    indexes: tuple[Index, ...] = field(default_factory=tuple)

    @classmethod
    def from_description(cls, table: Mapping[str, Any]) -> TableShape:
        """Build from a DescribeTable ``Table``."""
        keys = tuple(k["AttributeName"] for k in table["KeySchema"])
        indexes = []
        for gsi in table.get("GlobalSecondaryIndexes") or []:
            projection = gsi.get("Projection") or {}
            indexes.append(Index(
                name=gsi["IndexName"],
                keys=tuple(k["AttributeName"] for k in gsi["KeySchema"]),
                projection=projection.get("ProjectionType", "ALL"),
                include=tuple(projection.get("NonKeyAttributes") or ()),
            ))
        return cls(table["TableName"], keys, tuple(indexes))

    def key_of(self, item: Item) -> dict[str, Any]:
        """The primary key of ``item``."""
        return {k: item[k] for k in self.keys if k in item}

    def entry(self, index: Index, item: Item | None) -> dict[str, Any] | None:
        """The index entry of ``item`` (None when the item is not in the index: sparse)."""
        if not item or any(k not in item for k in index.keys):
            return None
        if index.projection == "ALL":
            return dict(item)
        wanted = set(self.keys) | set(index.keys)
        if index.projection == "INCLUDE":
            wanted |= set(index.include)
        return {k: v for k, v in item.items() if k in wanted}


@dataclass
class IndexWrite:
    """One write to a global secondary index."""

    index: str
    kind: str  # enter, leave, rekey, update
    writes: int
    units: int


def index_writes(shape: TableShape, before: Item | None, after: Item | None) -> list[IndexWrite]:
    """The index writes caused by one item changing from ``before`` to ``after``."""
    result = []
    for index in shape.indexes:
        old = shape.entry(index, before)
        new = shape.entry(index, after)
        if old is None and new is None:
            continue
        if old is None:
            assert new is not None
            result.append(IndexWrite(index.name, "enter", 1, write_units(item_size(new))))
        elif new is None:
            result.append(IndexWrite(index.name, "leave", 1, write_units(item_size(old))))
        elif any(old.get(k) != new.get(k) for k in index.keys):
            units = write_units(item_size(old)) + write_units(item_size(new))
            result.append(IndexWrite(index.name, "rekey", 2, units))
        elif old != new:
            result.append(IndexWrite(index.name, "update", 1, write_units(item_size(new))))
    return result


def write_cost(shape: TableShape, before: Item | None, after: Item | None, *, succeeded: bool,
               transactional: bool = False, condition_check: bool = False) -> tuple[int, list[IndexWrite]]:
    """(table WRU, index writes) of one write (or transaction ConditionCheck) to one item."""
    if condition_check or not succeeded:
        return write_units(item_size(before), transactional), []
    size = max(item_size(before), item_size(after))
    return write_units(size, transactional), index_writes(shape, before, after)


def query_units(sizes: Sequence[int], consistent: bool) -> float:
    """RRU of one Query or Scan page that evaluated items of these sizes."""
    return read_units(sum(sizes), consistent)
