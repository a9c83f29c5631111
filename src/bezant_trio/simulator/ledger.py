"""What the simulator actually wrote to sockets, per sequence channel.

A test proves "nothing the gateway sent while connected was lost" by comparing
these records with what the daemon captured. Records are kept as merged
``[first, last]`` ranges rather than lists, so a million-frame burst costs one
pair of ints, and holes (frames queued for a connection that died before they
were written) stay visible.
"""

from __future__ import annotations

import bisect

__all__ = ["SeqRanges"]


class SeqRanges:
    """A set of positive ints stored as sorted, disjoint, non-adjacent ranges."""

    __slots__ = ("_firsts", "_lasts", "count")

    def __init__(self) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        #: How many distinct seqs are in the set.
        self.count = 0

    def add(self, first: int, last: int | None = None) -> None:
        """Add ``first..last`` (inclusive); overlapping adds are counted once."""
        if last is None:
            last = first
        if last < first:
            raise ValueError(f"empty range {first}..{last}")
        # Fast path: writes on one connection arrive in order, so almost every
        # add extends the last range.
        if self._lasts and self._firsts[-1] <= first <= self._lasts[-1] + 1:
            if last > self._lasts[-1]:
                self.count += last - self._lasts[-1]
                self._lasts[-1] = last
            return
        # General path: merge with every range that overlaps or touches.
        lo = bisect.bisect_left(self._lasts, first - 1)
        hi = bisect.bisect_right(self._firsts, last + 1)
        new_first, new_last = first, last
        covered = 0
        for index in range(lo, hi):
            new_first = min(new_first, self._firsts[index])
            new_last = max(new_last, self._lasts[index])
            covered += self._lasts[index] - self._firsts[index] + 1
        self._firsts[lo:hi] = [new_first]
        self._lasts[lo:hi] = [new_last]
        self.count += (new_last - new_first + 1) - covered

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        index = bisect.bisect_right(self._firsts, seq) - 1
        return index >= 0 and seq <= self._lasts[index]

    def __len__(self) -> int:
        return self.count

    @property
    def last(self) -> int | None:
        """The highest seq in the set, or None when empty."""
        return self._lasts[-1] if self._lasts else None

    def ranges(self) -> list[list[int]]:
        """``[[first, last], ...]`` in ascending order (the JSON shape)."""
        return [[first, last] for first, last in zip(self._firsts, self._lasts, strict=True)]
