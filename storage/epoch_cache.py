"""Leader-epoch cache (KIP-101): leader epoch -> first offset written in that epoch.

A follower that restarts or follows a new leader asks the leader for the end offset of its
latest epoch and truncates everything after it, so divergent tails never survive an
election. This module keeps the entries and the arithmetic (pure functions over a tuple of
`EpochEntry`); `LeaderEpochCache` wraps them with persistence through a `store` callback
(the log writes a checked file atomically: tmp + fsync + rename + fsync dir).

Invariants: epochs strictly increase, start offsets strictly increase.

Rules (Kafka's `LeaderEpochFileCache`):
* `assign(epoch, start)`: no-op if it changes nothing; otherwise every entry with epoch >=
  `epoch` or start >= `start` is removed and (epoch, start) appended.
* `end_offset_for(epoch)`: (UNDEFINED, UNDEFINED) when the cache is empty or `epoch` is
  above every known epoch or is UNDEFINED; (epoch, LEO) for the latest epoch; otherwise
  (largest known epoch <= epoch, start offset of the next higher epoch). For an epoch below
  every known one: (epoch, start offset of the first epoch).
* `truncate_from_end(offset)`: drop entries with start >= offset (the log was truncated).
* `truncate_from_start(offset)`: the log start moved; entries wholly below it go, and the
  one that covers it is clamped to start at `offset`.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_left, bisect_right
from collections.abc import Callable

from semel import limits

UNDEFINED_EPOCH = -1
UNDEFINED_OFFSET = -1


@dataclasses.dataclass(frozen=True, slots=True)
class EpochEntry:
    epoch: int
    start_offset: int


Entries = tuple[EpochEntry, ...]


def assign(entries: Entries, epoch: int, start_offset: int) -> Entries:
    if epoch < 0 or start_offset < 0:
        raise ValueError(f"leader epoch {epoch} / start offset {start_offset} must be >= 0")
    if entries and entries[-1].epoch == epoch and entries[-1].start_offset <= start_offset:
        return entries  # already known (a later batch of the same epoch)
    kept = tuple(e for e in entries if e.epoch < epoch and e.start_offset < start_offset)
    return (*kept, EpochEntry(epoch, start_offset))


def end_offset_for(entries: Entries, epoch: int, log_end_offset: int) -> tuple[int, int]:
    if not entries or epoch == UNDEFINED_EPOCH:
        return UNDEFINED_EPOCH, UNDEFINED_OFFSET
    if epoch == entries[-1].epoch:
        return epoch, log_end_offset
    epochs = [e.epoch for e in entries]
    higher = bisect_right(epochs, epoch)
    if higher == len(entries):
        return UNDEFINED_EPOCH, UNDEFINED_OFFSET
    if higher == 0:
        return epoch, entries[0].start_offset
    return entries[higher - 1].epoch, entries[higher].start_offset


def truncate_from_end(entries: Entries, offset: int) -> Entries:
    starts = [e.start_offset for e in entries]
    return entries[: bisect_left(starts, offset)]


def truncate_from_start(entries: Entries, offset: int) -> Entries:
    starts = [e.start_offset for e in entries]
    covering = bisect_right(starts, offset) - 1
    if covering < 0:
        return entries
    first = entries[covering]
    return (EpochEntry(first.epoch, offset), *entries[covering + 1 :])


def check(entries: Entries) -> None:
    for a, b in zip(entries, entries[1:]):
        if not (a.epoch < b.epoch and a.start_offset < b.start_offset):
            raise ValueError(f"leader-epoch entries out of order: {a} then {b}")


class LeaderEpochCache:
    """The entries of one partition replica plus persistence on every change."""

    def __init__(
        self,
        entries: Entries = (),
        *,
        log_end_offset: Callable[[], int],
        store: Callable[[Entries], None] | None = None,
    ) -> None:
        check(entries)
        self._entries = entries
        self._log_end_offset = log_end_offset
        self._store = store

    @property
    def entries(self) -> Entries:
        return self._entries

    @property
    def latest_epoch(self) -> int:
        return self._entries[-1].epoch if self._entries else UNDEFINED_EPOCH

    def epoch_for_offset(self, offset: int) -> int:
        """The epoch whose range contains `offset` (UNDEFINED before the first entry)."""
        starts = [e.start_offset for e in self._entries]
        i = bisect_right(starts, offset) - 1
        return self._entries[i].epoch if i >= 0 else UNDEFINED_EPOCH

    def assign(self, epoch: int, start_offset: int) -> None:
        self._set(assign(self._entries, epoch, start_offset))

    def end_offset_for(self, epoch: int) -> tuple[int, int]:
        """(epoch, end offset) per KIP-101; see the module docstring."""
        return end_offset_for(self._entries, epoch, self._log_end_offset())

    def truncate_from_end(self, offset: int) -> None:
        self._set(truncate_from_end(self._entries, offset))

    def truncate_from_start(self, offset: int) -> None:
        self._set(truncate_from_start(self._entries, offset))

    def clear(self) -> None:
        self._set(())

    def _set(self, entries: Entries) -> None:
        if entries == self._entries:
            return
        if len(entries) > limits.MAX_LEADER_EPOCH_ENTRIES:
            raise ValueError(f"more than {limits.MAX_LEADER_EPOCH_ENTRIES} leader-epoch entries")
        if self._store is not None:
            self._store(entries)  # persist first: memory never runs ahead of the file
        self._entries = entries


def entries_to_json(entries: Entries) -> list[list[int]]:
    return [[e.epoch, e.start_offset] for e in entries]


def entries_from_json(value: object) -> Entries:
    if not isinstance(value, list):
        raise ValueError("leader-epoch checkpoint is not a list")
    entries = tuple(EpochEntry(int(epoch), int(start)) for epoch, start in value)
    check(entries)
    return entries
