"""Read markers: a max-register per (user, conversation) over message order keys."""

from __future__ import annotations

from crdt.errors import DecodeError
from crdt.op import OrderKey, UserId, check_id


def marker_from_json(value: object) -> OrderKey:
    if not (
        isinstance(value, list)
        and len(value) == 4
        and all(type(v) is int and v >= 0 for v in value[:2])
        and all(isinstance(v, str) for v in value[2:])
    ):
        raise DecodeError("a read marker is [l, c, origin, op_id]")
    return (value[0], value[1], check_id(value[2], "origin"), check_id(value[3], "op id"))


class ReadMarkers:
    """user -> highest order key read. Merge is pointwise max: commutative, idempotent."""

    __slots__ = ("_marks",)

    def __init__(self) -> None:
        self._marks: dict[UserId, OrderKey] = {}

    def get(self, user: str) -> OrderKey | None:
        return self._marks.get(UserId(user))

    def set(self, user: str, key: OrderKey) -> bool:
        """Raise `user`'s marker to `key`; returns whether it moved."""
        current = self._marks.get(UserId(user))
        if current is not None and current >= key:
            return False
        self._marks[UserId(user)] = key
        return True

    def merge(self, other: ReadMarkers) -> None:
        for user, key in other._marks.items():
            self.set(user, key)

    def to_json(self) -> dict[str, list[object]]:
        return {u: list(k) for u, k in sorted(self._marks.items())}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReadMarkers) and self._marks == other._marks

    __hash__ = None  # type: ignore[assignment]
