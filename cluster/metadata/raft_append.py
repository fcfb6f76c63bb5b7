"""The follower's side of Raft AppendEntries: what to do with the entries the leader sent.

pysyncobj 0.3.17 gets this wrong. Its handler deletes every entry after `prevLogIdx` whenever
the follower has more, even when they are the same entries (a delayed or repeated
AppendEntries, a rewound resend split by `appendEntriesBatchSizeBytes`, the single-entry message
that ends a large entry's transmission). The follower then holds less than it acknowledged, while the leader never lowers a
match index and goes on counting it toward a majority: a committed entry can end up on a
minority, and be lost if the leader dies then. When the deleted entries were applied, pysyncobj
logs "truncating already-applied log entries" and lowers the commit index.

Raft (Ongaro and Ousterhout, "In Search of an Understandable Consensus Algorithm", figure 2,
AppendEntries receiver implementation, and section 5.3) is narrower:
  3. If an existing entry conflicts with a new one (same index but different terms), delete
     the existing entry and all that follow it.
  4. Append any new entries not already in the log.
  5. If leaderCommit > commitIndex, set commitIndex = min(leaderCommit, index of last new entry).

`plan_append` applies rules 3 and 4 to the follower's log tail and says what to delete, what to
append and which index the message proves to match the leader (rule 5's "last new entry",
which is what the follower acknowledges); `commit_index_after` is rule 5. The shell that does
it to pysyncobj's journal is `MetadataQuorum` (quorum.py). Rules 1 and 2 (stale term, missing
or mismatching previous entry) stay pysyncobj's.

Invariants: an entry is deleted only on a conflict; nothing at or below the applied index
(max of commit index and last applied) is ever deleted: Raft guarantees a current leader
agrees with every committed entry, so a conflict there means the logs already diverged, and the
decision is `ConflictBelowApplied` (the shell refuses the message and logs it) instead of
rewriting history the state machine has applied; the commit index never moves backwards.
Pure: no I/O, no pysyncobj.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from semel.invariant import invariant

# pysyncobj's log entry: (command bytes, raft index, raft term).
Entry = tuple[bytes, int, int]


@dataclass(frozen=True, slots=True)
class AppendPlan:
    truncate_from_index: int | None  # delete this entry and every later one first; None: delete nothing
    append: tuple[Entry, ...]  # then append these (the leader's entries not already present)
    match_index: int  # the last index this message proves equal to the leader's log (acknowledged)


@dataclass(frozen=True, slots=True)
class ConflictBelowApplied:
    index: int  # the first conflicting index, <= applied_index
    local_term: int
    leader_term: int
    applied_index: int


def plan_append(prev_index: int, following: Sequence[Entry], entries: Sequence[Entry],
                applied_index: int) -> AppendPlan | ConflictBelowApplied:
    """Rules 3 and 4 for a message whose previous entry (`prev_index`) already matched.

    `following`: the follower's entries after `prev_index`, in index order. `entries`: the
    leader's, which must be contiguous from `prev_index + 1`. `applied_index`: nothing at or
    below it may be deleted.
    """
    for position, entry in enumerate(entries):
        invariant(entry[1] == prev_index + 1 + position,
                  f"AppendEntries entries not contiguous after {prev_index}: {[e[1] for e in entries]}")
    for position, entry in enumerate(following[:len(entries)]):
        invariant(entry[1] == prev_index + 1 + position,
                  f"follower log not contiguous after {prev_index}: {[e[1] for e in following[:len(entries)]]}")
    match_index = prev_index + len(entries)
    for position, entry in enumerate(entries):
        if position >= len(following):
            return AppendPlan(None, tuple(entries[position:]), match_index)
        local = following[position]
        if local[2] != entry[2]:
            if entry[1] <= applied_index:
                return ConflictBelowApplied(entry[1], local[2], entry[2], applied_index)
            return AppendPlan(entry[1], tuple(entries[position:]), match_index)
    return AppendPlan(None, (), match_index)


def commit_index_after(commit_index: int, leader_commit_index: int, match_index: int) -> int:
    """Rule 5, never backwards: entries past `match_index` are not known to be the leader's."""
    return max(commit_index, min(leader_commit_index, match_index))
