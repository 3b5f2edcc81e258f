"""Version vectors with gaps: per origin, the highest contiguous seq plus the dots seen beyond."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from crdt.errors import DecodeError
from crdt.op import Dot, NodeId, check_id

MAX_SEQ = 2**53 - 1


class VersionVector:
    """A set of dots, stored compactly as contiguous prefixes plus sparse extras.

    `contiguous[o] = n` means dots (o, 1..n) are all present. `extra[o]` holds present seqs > n+1.
    """

    __slots__ = ("_contiguous", "_extra")

    def __init__(self, contiguous: Mapping[NodeId, int] | None = None) -> None:
        self._contiguous: dict[NodeId, int] = {}
        self._extra: dict[NodeId, set[int]] = {}
        for origin, seq in (contiguous or {}).items():
            check_id(origin, "origin")
            if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
                raise DecodeError("version vector seqs must be integers >= 0")
            if seq:
                self._contiguous[origin] = seq

    @classmethod
    def from_dots(cls, dots: Iterable[Dot]) -> VersionVector:
        vv = cls()
        for dot in dots:
            vv.add(dot)
        return vv

    def copy(self) -> VersionVector:
        vv = VersionVector()
        vv._contiguous = dict(self._contiguous)
        vv._extra = {o: set(s) for o, s in self._extra.items()}
        return vv

    def __contains__(self, dot: object) -> bool:
        if not isinstance(dot, Dot):
            return False
        if dot.seq <= self._contiguous.get(dot.origin, 0):
            return True
        extra = self._extra.get(dot.origin)
        return extra is not None and dot.seq in extra

    def add(self, dot: Dot) -> bool:
        """Add a dot; returns False if it was already present."""
        if dot in self:
            return False
        origin = dot.origin
        top = self._contiguous.get(origin, 0)
        if dot.seq == top + 1:
            top += 1
            extra = self._extra.get(origin)
            if extra:
                while top + 1 in extra:
                    top += 1
                    extra.discard(top)
                if not extra:
                    del self._extra[origin]
            self._contiguous[origin] = top
        else:
            self._extra.setdefault(origin, set()).add(dot.seq)
        return True

    def merge(self, other: VersionVector) -> None:
        """In-place union (the join of the dot-set lattice).

        Joins contiguous prefixes by max instead of adding their dots one by one: `other` may
        come off the wire claiming `{origin: 2**53 - 1}`, and walking that prefix never ends.
        """
        for origin, top in other._contiguous.items():
            if top > self._contiguous.get(origin, 0):
                self._contiguous[origin] = top
                self._absorb_extras(origin)
        for origin, seqs in other._extra.items():
            for seq in seqs:
                self.add(Dot(origin, seq))

    def _absorb_extras(self, origin: NodeId) -> None:
        """Restore the invariant after the prefix of `origin` grew: extras lie beyond a gap."""
        extra = self._extra.get(origin)
        if not extra:
            return
        top = self._contiguous[origin]
        extra.difference_update([seq for seq in extra if seq <= top])
        while top + 1 in extra:
            top += 1
            extra.discard(top)
        self._contiguous[origin] = top
        if not extra:
            del self._extra[origin]

    def contiguous(self) -> dict[NodeId, int]:
        """The portable part: origin -> highest contiguous seq (what a client cursor stores)."""
        return dict(self._contiguous)

    def top(self, origin: NodeId) -> int:
        """Highest seq present for `origin` (contiguous or not)."""
        extra = self._extra.get(origin)
        return max(extra) if extra else self._contiguous.get(origin, 0)

    def next_seq(self, origin: NodeId) -> int:
        return self.top(origin) + 1

    def has_gaps(self) -> bool:
        return bool(self._extra)

    def origins(self) -> set[NodeId]:
        return set(self._contiguous) | set(self._extra)

    def dots_beyond(self, remote: VersionVector) -> Iterator[Dot]:
        """Every dot here that `remote` lacks, per origin in ascending seq."""
        for origin in sorted(self.origins()):
            start = remote._contiguous.get(origin, 0)
            remote_extra = remote._extra.get(origin, ())
            for seq in range(start + 1, self._contiguous.get(origin, 0) + 1):
                if seq not in remote_extra:
                    yield Dot(origin, seq)
            for seq in sorted(self._extra.get(origin, ())):
                if seq > start and seq not in remote_extra:
                    yield Dot(origin, seq)

    def __len__(self) -> int:
        return sum(self._contiguous.values()) + sum(len(s) for s in self._extra.values())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VersionVector):
            return NotImplemented
        return self._contiguous == other._contiguous and self._extra == other._extra

    __hash__ = None  # type: ignore[assignment]

    def to_json(self) -> dict[str, object]:
        """Full form including gaps: {"c": {origin: n}, "x": {origin: [seq, ...]}}."""
        return {
            "c": dict(sorted(self._contiguous.items())),
            "x": {o: sorted(s) for o, s in sorted(self._extra.items())},
        }

    @classmethod
    def from_json(cls, value: object) -> VersionVector:
        if not isinstance(value, dict) or set(value) != {"c", "x"}:
            raise DecodeError("version vector must be {'c': {...}, 'x': {...}}")
        contiguous, extra = value["c"], value["x"]
        if not isinstance(contiguous, dict) or not isinstance(extra, dict):
            raise DecodeError("version vector parts must be objects")
        vv = cls(contiguous)
        for origin, seqs in extra.items():
            # Checked before the loop: an empty list used to let any key through unvalidated.
            check_id(origin, "origin")
            if not isinstance(seqs, list) or len(seqs) > 100_000:
                raise DecodeError("version vector extras must be lists of seqs")
            for seq in seqs:
                vv.add(Dot(NodeId(origin), seq))
        return vv

    def __repr__(self) -> str:
        return f"VersionVector({self.to_json()!r})"
