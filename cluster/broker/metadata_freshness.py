"""Is this broker's metadata image current? Two answers, for two prices.

A broker's image can be arbitrarily stale: a broker cut off from the metadata quorum keeps its
last image (and in it, its own leadership of every partition it led), and a broker resumed
after a pause serves from the image it had before the pause until its quorum node catches up.
Most answers tolerate that (a stale "who leads" costs the client one NOT_LEADER_OR_FOLLOWER
round trip). Two kinds do not, and use these:

* `HeartbeatLease` (free, a hint): the broker's last heartbeat that the active controller
  answered "registered and unfenced" was *sent* less than `lease_ms` ago. The controller
  fences a broker it has not heard for `session_timeout_ms` (sooner when peers report it
  unreachable), so a broker without a current lease may have been fenced, and its
  partitions led elsewhere, without knowing. FindCoordinator answers only under a current
  lease, so an isolated broker stops naming itself as coordinator.
* `QuorumRead.sync()` (a Raft round trip, exact): commits a `Barrier` through the quorum and
  returns once this node applied it. The local image then contains every metadata change
  committed before the call (the barrier is submitted after it, and pysyncobj calls a
  submitter back only once the entry is applied locally, at the term it was appended in).
  A coordinator confirms its epoch this way before any answer that would make a client
  give up (a fatal code read from its in-memory state; see txn_coordinator_shell.py).

Bounds: at most one barrier in flight and one queued per broker, however many callers; a
caller arriving while a barrier is in flight waits for the next one (a barrier submitted
before the call cannot vouch for it). A barrier not applied within `timeout_ms` (no quorum
reachable) answers False.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Protocol

from semel.cluster.metadata.quorum import MetadataSubmitError
from semel.cluster.metadata.state import Barrier, Command, Result
from semel.v1 import common_pb2 as pb

log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class HeartbeatLease:
    """Pure: heartbeat send times and answers in (monotonic ms), "current?" out."""

    lease_ms: int
    _acked_sent_ms: int | None = None  # send time of the newest heartbeat answered NONE and unfenced

    def on_answer(self, sent_ms: int, error_code: int, fenced: bool) -> None:
        """The controller answered the heartbeat sent at `sent_ms`."""
        if error_code == pb.NONE and not fenced:
            if self._acked_sent_ms is None or sent_ms > self._acked_sent_ms:
                self._acked_sent_ms = sent_ms
        else:
            self._acked_sent_ms = None  # fenced, stale epoch, not the controller: no lease

    def current(self, now_ms: int) -> bool:
        return self._acked_sent_ms is not None and now_ms - self._acked_sent_ms < self.lease_ms


class BarrierSubmitter(Protocol):
    async def submit(self, command: Command, timeout_s: float | None = None) -> Result: ...

    def has_quorum(self) -> bool: ...


class QuorumRead:
    """Linearizable reads of the metadata image by a shared barrier (see the module docstring)."""

    def __init__(self, quorum: BarrierSubmitter, timeout_ms: int) -> None:
        self.quorum = quorum
        self.timeout_ms = timeout_ms
        self.barriers = 0  # submitted (for tests and logs)
        self._next: asyncio.Future[bool] | None = None  # the barrier callers wait for; not submitted yet
        self._runner: asyncio.Task[None] | None = None

    async def sync(self) -> bool:
        """True once the local image holds every change committed before this call; False if
        the quorum could not be reached in time (the image may be stale)."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        fut = self._next
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="quorum-read")
        return await asyncio.shield(fut)

    async def _run(self) -> None:
        while self._next is not None:
            fut, self._next = self._next, None
            ok = await self._barrier()
            if not fut.done():
                fut.set_result(ok)

    async def _barrier(self) -> bool:
        if not self.quorum.has_quorum():
            return False  # cut off from the majority: nothing can commit; answer now
        self.barriers += 1
        try:
            result = await self.quorum.submit(Barrier(), timeout_s=self.timeout_ms / 1000)
        except MetadataSubmitError as exc:  # no commit in time, or the node closed: not confirmed
            log.info("quorum read failed: %s", exc)
            return False
        return result.ok
