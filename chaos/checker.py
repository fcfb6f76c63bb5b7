"""Checks a history (``semel.chaos.history``) for every anomaly of a Kafka-like log.

Theory of operation (Jepsen's Kafka checker method, restated; definitions in
docs/chaos-checker.md)
---------------------------------------------------------------------------------------------
1. Pair invokes and completions into operations. An operation *committed* if it completed
   ``ok``, or completed ``info`` and an ok read saw one of its values (one visible write proves
   the atomic whole). ``fail`` never committed. An unproven ``info`` is neither a success nor a
   failure: it is never counted as lost, unseen or aborted.
2. Per key build the observed log: offset -> values, from the sends of committed operations
   (with their acknowledged offsets) and from every poll result of every operation. Two values
   at one offset are ``inconsistent-offsets``; one value at two offsets is ``duplicate``.
   Offsets with no value (transaction markers, aborted records) are dropped, giving dense
   *indexes*; every order comparison below uses indexes, so marker gaps are never skips.
3. Everything else is a scan over per-key dict indexes: aborted reads, precommitted reads,
   lost writes (with Jepsen's proof rule), unseen values, per-process and internal poll
   order, send order, and two dependency graphs searched with an iterative Tarjan SCC:
   write-write (G0, allowed in Kafka) and committed-before (G1c, see ``_g1c``).
4. Workload invariants: money (transfers are atomic, appear once, sum to zero) and copier
   (output == input, no duplicates, per-partition order kept).

The checker is pure (no I/O except ``check_file``) and linear in the history size, apart
from sorting offsets per key.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semel.chaos.history import (
    BALANCE,
    COPY_INPUT,
    COPY_OUTPUT,
    CRASH,
    FAIL,
    FINAL_READ_FS,
    INFO,
    KEYS_FS,
    MOP_FS,
    OK,
    TRANSFER,
    Event,
    HistoryError,
    Op,
    Poll,
    Send,
    pair_ops,
    read_history,
)

# Anomalies that Kafka's model allows: reported under "allowed", never invalidate a run.
ALLOWED = frozenset({"G0", "int-send-skip"})
# Everything the checker can report, for documentation and tests.
ANOMALIES = frozenset({
    "inconsistent-offsets", "duplicate", "G1a", "garbage-read", "precommitted-read",
    "lost-write", "unseen", "poll-skip", "nonmonotonic-poll", "int-poll-skip",
    "int-nonmonotonic-poll", "nonmonotonic-send", "int-nonmonotonic-send", "G1c",
    "money-torn-transfer", "money-duplicate-leg", "money-lost-transfer", "money-nonzero-sum",
    "copier-lost", "copier-extra", "copier-duplicate", "copier-reorder",
}) | ALLOWED
MAX_EXAMPLES_DEFAULT = 16       # examples kept per anomaly (all are counted)


# --- per-operation facts ------------------------------------------------------------------
Pairs = list[tuple[int | None, int]]


@dataclass(slots=True)
class _Facts:
    op: Op
    sends: list[Send]
    reads: dict[str, Pairs]      # key -> (offset, value) in poll order; a key polled empty: []
    polled: bool                 # has a poll micro-op (returned or not)
    committed: bool = False

    @property
    def ref(self) -> dict[str, Any]:
        return {"index": self.op.index, "process": self.op.process, "f": self.op.f,
                "type": self.op.type}


def _facts(op: Op) -> _Facts:
    sends: list[Send] = []
    reads: dict[str, Pairs] = {}
    polled = False
    for mop in op.mops:
        if isinstance(mop, Send):
            sends.append(mop)
        elif isinstance(mop, Poll):
            polled = True
            for key, pairs in (mop.reads or {}).items():
                if key in reads:
                    reads[key] = reads[key] + list(pairs)
                else:
                    reads[key] = list(pairs)
    return _Facts(op, sends, reads, polled)


# --- findings -----------------------------------------------------------------------------------
@dataclass(slots=True)
class _Findings:
    max_examples: int
    examples: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, name: str, example: Any) -> None:
        if name not in ANOMALIES:
            raise AssertionError(f"unknown anomaly {name}")
        self.counts[name] += 1
        if len(self.examples[name]) < self.max_examples:
            self.examples[name].append(example)


# --- the per-key version order ----------------------------------------------------------------
@dataclass(slots=True)
class _KeyOrder:
    offsets: list[int]                        # sorted offsets that hold a value
    values_at: list[list[int]]                # index -> values seen at that offset
    index_of_offset: dict[int, int]
    first_index: dict[int, int]               # value -> lowest index it appears at
    last_index: dict[int, int]                # value -> highest index it appears at

    def read_index(self, offset: int | None, value: int) -> int | None:
        if offset is not None and offset in self.index_of_offset:
            return self.index_of_offset[offset]
        return self.first_index.get(value)

    def send_index(self, send: Send) -> int | None:
        if send.offset is not None:
            i = self.index_of_offset.get(send.offset)
            if i is not None and send.value in self.values_at[i]:
                return i
        return self.first_index.get(send.value)


def _indexes(order: _KeyOrder, pairs: Pairs) -> list[int | None]:
    """Dense index of each (offset, value) read; fast path when every offset is known."""
    known = order.index_of_offset
    fast: list[int | None] = [known.get(o, -1) if o is not None else -1 for o, _ in pairs]
    if -1 not in fast:
        return fast
    return [order.read_index(o, v) for o, v in pairs]


def _build_order(key: str, log: Mapping[int, int],
                 clash: Mapping[tuple[str, int], list[int]]) -> _KeyOrder:
    offsets = sorted(log)
    values_at = [[log[o], *clash.get((key, o), ())] for o in offsets]
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, values in enumerate(values_at):
        for v in values:
            first.setdefault(v, i)
            last[v] = i
    return _KeyOrder(offsets, values_at, {o: i for i, o in enumerate(offsets)}, first, last)


def _proves(ok_read: Mapping[str, set[int]], attempts: Mapping[str, Mapping[int, list[_Facts]]],
            send: Send, fa: _Facts) -> bool:
    """An ok read of this value proves ``fa`` committed if no other attempt could have
    written it (every other attempt of the same value failed)."""
    if send.value not in ok_read.get(send.key, ()):
        return False
    return all(w is fa or w.op.type == FAIL for w in attempts[send.key][send.value])


def _attempt_rank(fa: _Facts) -> int:
    return 0 if fa.committed else 1 if fa.op.type == INFO else 2


class _Analysis:
    """Indexes shared by all the checks; built once, linear in the history."""

    def __init__(self, ops: Sequence[Op], max_examples: int) -> None:
        self.found = _Findings(max_examples)
        self.facts = sorted((_facts(op) for op in ops), key=lambda fa: fa.op.order)
        # Values are unique per key, except that a retry may re-send a value (a copier
        # re-copies after an abort): every sending operation is an *attempt*.
        attempts: dict[str, dict[int, list[_Facts]]] = defaultdict(lambda: defaultdict(list))
        self.ok_read: dict[str, set[int]] = defaultdict(set)
        for fa in self.facts:
            for s in fa.sends:
                attempts[s.key][s.value].append(fa)
            if fa.op.type == OK:
                for k, pairs in fa.reads.items():
                    self.ok_read[k].update([v for _, v in pairs])
        for fa in self.facts:
            fa.committed = fa.op.type == OK or (
                fa.op.type == INFO and any(_proves(self.ok_read, attempts, s, fa)
                                           for s in fa.sends))
        # writer[k][v]: the attempt a read of v is attributed to: a committed one if any,
        # else an unknown one, else a failed one.
        self.writer: dict[str, dict[int, _Facts]] = {
            k: {v: (ws[0] if len(ws) == 1 else min(ws, key=_attempt_rank))
                for v, ws in by_value.items()}
            for k, by_value in attempts.items()}
        self.orders = self._version_orders()

    def _version_orders(self) -> dict[str, _KeyOrder]:
        logs: dict[str, dict[int, int]] = defaultdict(dict)     # key -> offset -> first value
        clash: dict[tuple[str, int], list[int]] = {}            # further values at one offset

        def put(k: str, log: dict[int, int], o: int, v: int) -> None:
            first = log.setdefault(o, v)
            if first != v:
                more = clash.setdefault((k, o), [])
                if v not in more:
                    more.append(v)

        for fa in self.facts:
            if fa.committed and fa.op.f in MOP_FS:
                for s in fa.sends:
                    if s.offset is not None:
                        put(s.key, logs[s.key], s.offset, s.value)
            for k, pairs in fa.reads.items():
                log = logs[k]
                for o, v in pairs:
                    if o is not None and log.setdefault(o, v) != v:
                        put(k, log, o, v)
        return {k: _build_order(k, log, clash) for k, log in logs.items()}

    def order(self, key: str) -> _KeyOrder | None:
        return self.orders.get(key)


# --- log-shape anomalies ---------------------------------------------------------------------------
def _offsets_and_duplicates(an: _Analysis) -> None:
    for k, order in an.orders.items():
        for i, values in enumerate(order.values_at):
            if len(values) > 1:
                an.found.add("inconsistent-offsets", {"key": k, "offset": order.offsets[i],
                                                      "values": sorted(values)})
        offsets_of: dict[int, list[int]] = defaultdict(list)
        for i, values in enumerate(order.values_at):
            for v in values:
                offsets_of[v].append(order.offsets[i])
        for v, offs in offsets_of.items():
            if len(offs) > 1:
                an.found.add("duplicate", {"key": k, "value": v, "offsets": offs})


def _aborted_garbage_precommitted(an: _Analysis) -> None:
    no_writers: dict[int, _Facts] = {}
    fine = {k: {v for v, w in ws.items() if w.op.type != FAIL} for k, ws in an.writer.items()}
    for fa in an.facts:
        own: dict[str, dict[int, Send]] = defaultdict(dict)
        for s in fa.sends:
            own[s.key][s.value] = s
        for k, pairs in fa.reads.items():
            writers = an.writer.get(k, no_writers)
            mine = own.get(k, no_writers)
            ok_values = fine.get(k, set())
            suspects = [(o, v) for o, v in pairs if v not in ok_values or v in mine]
            for o, v in suspects:
                w = writers.get(v)
                if v in mine:
                    an.found.add("precommitted-read", {"key": k, "value": v, "offset": o,
                                                       "kind": "own-value", "op": fa.ref})
                elif w is None:
                    an.found.add("garbage-read", {"key": k, "value": v, "offset": o,
                                                  "op": fa.ref})
                else:
                    an.found.add("G1a", {"key": k, "value": v, "offset": o, "writer": w.ref,
                                         "error": w.op.error, "reader": fa.ref})
        if own and fa.reads:
            _read_past_own_write(an, fa, own)


def _read_past_own_write(an: _Analysis, fa: _Facts, own: Mapping[str, Mapping[int, Send]]) -> None:
    """A still-open transaction pins the last stable offset below its own first write, so it
    can never read its own key at or beyond that write."""
    for k, sends in own.items():
        order = an.order(k)
        if order is None or k not in fa.reads:
            continue
        own_idx = [i for s in sends.values() if (i := order.send_index(s)) is not None]
        if not own_idx:
            continue
        low = min(own_idx)
        for o, v in fa.reads[k]:
            if v in sends:
                continue
            ri = order.read_index(o, v)
            if ri is not None and ri >= low:
                an.found.add("precommitted-read", {"key": k, "value": v, "offset": o,
                                                   "kind": "read-past-own-write",
                                                   "own_first_index": low, "read_index": ri,
                                                   "op": fa.ref})
                break


def _an_ok_reader(an: _Analysis, k: str, values: Sequence[int]) -> dict[str, Any] | None:
    """Some ok operation that read one of ``values`` of ``k`` (for examples; a linear scan)."""
    wanted = set(values)
    for fa in an.facts:
        if fa.op.type == OK and any(v in wanted for _, v in fa.reads.get(k, ())):
            return fa.ref
    return None


def _lost_and_unseen(an: _Analysis) -> dict[str, int]:
    lost: set[tuple[str, int]] = set()
    for k, seen in an.ok_read.items():
        order = an.order(k)
        if order is None:
            continue
        bound = max((order.first_index[v] for v in seen if v in order.first_index), default=-1)
        if bound < 0:
            continue
        max_read: dict[str, Any] | None = None
        for v, last in order.last_index.items():
            if last > bound or v in seen:
                continue
            w = an.writer.get(k, {}).get(v)
            if w is None or not w.committed:
                continue
            lost.add((k, v))
            if max_read is None:
                max_read = _an_ok_reader(an, k, order.values_at[bound])
            an.found.add("lost-write", {
                "key": k, "value": v, "index": order.first_index[v], "max_read_index": bound,
                "writer": w.ref, "max_read": max_read})
    unseen_per_key: Counter[str] = Counter()
    for k, writers in an.writer.items():
        seen = an.ok_read.get(k, set())
        for v, w in writers.items():
            if w.op.type == OK and v not in seen and (k, v) not in lost:
                unseen_per_key[k] += 1
                an.found.add("unseen", {"key": k, "value": v, "writer": w.ref})
    return dict(unseen_per_key)


# --- order of polls and sends ----------------------------------------------------------------------
def _delta_finding(an: _Analysis, skip: str, nonmono: str, k: str, i1: int, i2: int,
                   example: dict[str, Any]) -> None:
    delta = i2 - i1
    if delta > 1:
        order = an.orders[k]
        skipped = [order.values_at[i][0] for i in range(i1 + 1, min(i2, i1 + 9))]
        an.found.add(skip, {**example, "key": k, "delta": delta, "skipped": skipped})
    elif delta < 1:
        an.found.add(nonmono, {**example, "key": k, "delta": delta})


def _poll_order(an: _Analysis) -> None:
    """Per consumer process, under assign: a poll continues where the last one left off."""
    last: dict[int, dict[str, tuple[int, int, _Facts]]] = defaultdict(dict)
    subscribed: set[int] = set()
    for fa in an.facts:
        p, f, t = fa.op.process, fa.op.f, fa.op.type
        if f in KEYS_FS:
            if t != FAIL:
                last[p].clear()
                subscribed.discard(p)
                if f != "assign":
                    subscribed.add(p)
            continue
        if f == CRASH:
            last[p].clear()
            subscribed.discard(p)
            continue
        if f in FINAL_READ_FS or not fa.polled:
            continue
        if t != OK:
            # The consumer may have moved (or been rewound) by an amount we cannot see.
            last[p].clear()
            continue
        for k, pairs in fa.reads.items():
            order = an.orders.get(k)
            if order is None or not pairs:
                continue
            first = order.read_index(*pairs[0])
            end = order.read_index(*pairs[-1])
            prev = last[p].get(k)
            if prev is not None and first is not None and p not in subscribed:
                i_prev, v_prev, op_prev = prev
                _delta_finding(an, "poll-skip", "nonmonotonic-poll", k, i_prev, first,
                               {"values": [v_prev, pairs[0][1]], "ops": [op_prev.ref, fa.ref]})
            if end is not None:
                last[p][k] = (end, pairs[-1][1], fa)


def _internal_order(an: _Analysis) -> None:
    for fa in an.facts:
        rebalanced = fa.op.extra.get("rebalanced") or ()
        for k, pairs in fa.reads.items():
            order = an.order(k)
            if order is None or k in rebalanced or len(pairs) < 2:
                continue
            idx = _indexes(order, pairs)
            if idx[0] is not None and idx == list(range(idx[0], idx[0] + len(idx))):
                continue        # the common case: consecutive records
            for n in range(len(idx) - 1):
                i1, i2 = idx[n], idx[n + 1]
                if i1 is not None and i2 is not None and i2 - i1 != 1:
                    _delta_finding(an, "int-poll-skip", "int-nonmonotonic-poll", k, i1, i2,
                                   {"values": [pairs[n][1], pairs[n + 1][1]], "op": fa.ref})
        sends_by_key: dict[str, list[Send]] = defaultdict(list)
        for s in fa.sends:
            sends_by_key[s.key].append(s)
        for k, sends in sends_by_key.items():
            order = an.order(k)
            if order is None or len(sends) < 2:
                continue
            for s1, s2 in zip(sends, sends[1:]):
                i1, i2 = order.send_index(s1), order.send_index(s2)
                if i1 is not None and i2 is not None:
                    _delta_finding(an, "int-send-skip", "int-nonmonotonic-send", k, i1, i2,
                                   {"values": [s1.value, s2.value], "op": fa.ref})


def _send_order(an: _Analysis) -> None:
    """Per producer process: a later acknowledged send lands after an earlier one."""
    last: dict[int, dict[str, tuple[int, int, _Facts]]] = defaultdict(dict)
    for fa in an.facts:
        p, t = fa.op.process, fa.op.type
        if fa.op.f == CRASH:
            last[p].clear()
            continue
        if not fa.sends or fa.op.f not in MOP_FS:
            continue
        if t == INFO:          # where an unknown send landed relative to later ones is unknown
            for s in fa.sends:
                last[p].pop(s.key, None)
            continue
        if t != OK:
            continue
        firsts: dict[str, Send] = {}
        lasts: dict[str, Send] = {}
        for s in fa.sends:
            firsts.setdefault(s.key, s)
            lasts[s.key] = s
        for k, s in firsts.items():
            order = an.order(k)
            i = order.send_index(s) if order else None
            prev = last[p].get(k)
            if prev is not None and i is not None and i <= prev[0]:
                an.found.add("nonmonotonic-send", {
                    "key": k, "values": [prev[1], s.value], "delta": i - prev[0],
                    "ops": [prev[2].ref, fa.ref]})
        for k, s in lasts.items():
            order = an.order(k)
            i = order.send_index(s) if order else None
            if i is not None:
                last[p][k] = (i, s.value, fa)


# --- dependency graphs --------------------------------------------------------------------------------
def _tarjan_sccs(n: int, succ: Sequence[Sequence[int]]) -> list[list[int]]:
    """Strongly connected components with more than one node (iterative Tarjan)."""
    index = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    stack: list[int] = []
    out: list[list[int]] = []
    counter = 0
    for root in range(n):
        if index[root] != -1:
            continue
        work = [(root, 0)]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        while work:
            v, pos = work[-1]
            edges = succ[v]
            if pos < len(edges):
                work[-1] = (v, pos + 1)
                w = edges[pos]
                if index[w] == -1:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = True
                    work.append((w, 0))
                elif on_stack[w] and index[w] < low[v]:
                    low[v] = index[w]
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                if low[v] < low[parent]:
                    low[parent] = low[v]
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def _cycle_in(start: int, members: set[int], succ: Sequence[Sequence[int]]) -> list[int]:
    """Shortest cycle through ``start`` inside one SCC (BFS); returns [start, ..., start]."""
    parent: dict[int, int] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in succ[v]:
                if w not in members:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError("an SCC member lies on no cycle")


def _g0(an: _Analysis) -> None:
    """Write-write edges between the writers of adjacent committed versions of each key."""
    nodes = [fa for fa in an.facts if fa.committed and fa.sends]
    id_of = {id(fa): i for i, fa in enumerate(nodes)}
    succ: list[list[int]] = [[] for _ in nodes]
    why: dict[tuple[int, int], dict[str, Any]] = {}
    for k, order in an.orders.items():
        prev: tuple[int, int] | None = None
        placed: set[int] = set()
        for values in order.values_at:
            for v in values:
                w = an.writer.get(k, {}).get(v)
                if w is None or not w.committed or v in placed:
                    continue
                placed.add(v)
                node = id_of[id(w)]
                if prev is not None and prev[0] != node:
                    if (prev[0], node) not in why:
                        succ[prev[0]].append(node)
                        why[(prev[0], node)] = {"key": k, "values": [prev[1], v]}
                prev = (node, v)
    for comp in _tarjan_sccs(len(nodes), succ):
        cyc = _cycle_in(comp[0], set(comp), succ)
        steps = [{"from": nodes[a].ref, "to": nodes[b].ref, "type": "ww", **why[(a, b)]}
                 for a, b in zip(cyc, cyc[1:])]
        an.found.add("G0", {"scc_size": len(comp), "cycle": [nodes[i].ref for i in cyc],
                            "steps": steps})


def _g1c(an: _Analysis) -> None:
    """Cycles of committed-before edges between committed transactions.

    T1 -> T2 when T2 (committed) read key k at index j and T1 (committed) wrote a value of k
    at index i <= j. i == j is Adya's write-read edge; i < j holds because a read_committed
    read at j needs every transaction with a record below j decided (the last stable offset
    passed it). Either way T1 committed before T2 read, before T2 committed, so a cycle is
    circular information flow. Realised in linear size with one chain node per (key, index).
    A transaction's reads past its own writes are precommitted reads, not graph edges.
    """
    ops = [fa for fa in an.facts if fa.committed and (fa.sends or fa.reads)]
    n_ops = len(ops)
    chain_base: dict[str, int] = {}
    total = n_ops
    for k, key_order in an.orders.items():
        chain_base[k] = total
        total += len(key_order.offsets)
    succ: list[list[int]] = [[] for _ in range(total)]
    chain_key: list[tuple[str, int]] = [("", 0)] * (total - n_ops)
    for k, key_order in an.orders.items():
        base = chain_base[k]
        for pos in range(len(key_order.offsets)):
            chain_key[base + pos - n_ops] = (k, pos)
            if pos + 1 < len(key_order.offsets):
                succ[base + pos].append(base + pos + 1)
    for node, fa in enumerate(ops):
        own_low: dict[str, int] = {}
        for s in fa.sends:
            order = an.order(s.key)
            i = order.send_index(s) if order else None
            if i is not None:
                own_low[s.key] = min(own_low.get(s.key, i), i)
                succ[node].append(chain_base[s.key] + i)
        for k, pairs in fa.reads.items():
            order = an.order(k)
            if order is None or not pairs:
                continue
            j = max((i for i in _indexes(order, pairs) if i is not None), default=-1)
            if j < 0:
                continue
            if k in own_low and own_low[k] <= j:
                continue     # reading past its own write: a precommitted read, reported there
            succ[chain_base[k] + j].append(node)
    for comp in _tarjan_sccs(total, succ):
        members = set(comp)
        start = min(x for x in comp if x < n_ops)
        cyc = _cycle_in(start, members, succ)
        an.found.add("G1c", _explain_g1c(an, ops, chain_key, n_ops, cyc, len(
            [x for x in comp if x < n_ops])))


def _explain_g1c(an: _Analysis, ops: Sequence[_Facts], chain_key: Sequence[tuple[str, int]],
                 n_ops: int, cyc: Sequence[int], size: int) -> dict[str, Any]:
    op_nodes = [x for x in cyc if x < n_ops]
    steps = []
    i = 0
    while i < len(cyc) - 1:
        a = cyc[i]
        j = i + 1
        while cyc[j] >= n_ops:
            j += 1
        if j > i + 1:
            k, wi = chain_key[cyc[i + 1] - n_ops]
            _, ri = chain_key[cyc[j - 1] - n_ops]
            order = an.orders[k]
            steps.append({"from": ops[a].ref, "to": ops[cyc[j]].ref, "key": k,
                          "type": "wr" if wi == ri else "ww+wr",
                          "written": [order.offsets[wi], order.values_at[wi][0]],
                          "read": [order.offsets[ri], order.values_at[ri][0]]})
        i = j
    return {"scc_transactions": size, "cycle": [ops[x].ref for x in op_nodes], "steps": steps}


# --- workload invariants -------------------------------------------------------------------------------
def _money(an: _Analysis) -> dict[str, Any] | None:
    transfers = [fa for fa in an.facts if fa.op.f == TRANSFER]
    balances = [fa for fa in an.facts if fa.op.f == BALANCE and fa.op.type == OK]
    if not transfers and not balances:
        return None
    leg: dict[tuple[str, int], tuple[_Facts, int]] = {}
    for fa in transfers:
        amount = int(fa.op.extra["transfer"]["amount"])
        leg[(fa.sends[0].key, fa.sends[0].value)] = (fa, -amount)
        leg[(fa.sends[1].key, fa.sends[1].value)] = (fa, amount)
    summary: dict[str, Any] = {"transfers": len(transfers), "balance_reads": len(balances)}
    for b in balances:
        read_keys = set(b.reads)
        seen: Counter[tuple[str, int]] = Counter((k, v) for k, ps in b.reads.items()
                                                 for _, v in ps)
        legs_seen: Counter[int] = Counter()
        balance: Counter[str] = Counter()
        for (k, v), n in seen.items():
            if n > 1:
                an.found.add("money-duplicate-leg", {"key": k, "value": v, "count": n,
                                                     "read": b.ref})
            hit = leg.get((k, v))
            if hit is not None:
                legs_seen[id(hit[0])] += 1          # distinct legs: torn or not
                balance[k] += hit[1] * n            # every copy moves money
        for fa in transfers:
            keys = {fa.sends[0].key, fa.sends[1].key}
            if not keys <= read_keys:
                continue
            count = legs_seen.get(id(fa), 0)
            if count == 1:
                an.found.add("money-torn-transfer", {"transfer": fa.ref, "read": b.ref,
                                                     **fa.op.extra["transfer"]})
            elif count == 0 and fa.op.type == OK:
                an.found.add("money-lost-transfer", {"transfer": fa.ref, "read": b.ref,
                                                     **fa.op.extra["transfer"]})
        total = sum(balance.values())
        if total != 0:
            an.found.add("money-nonzero-sum", {"sum": total, "read": b.ref,
                                               "balances": dict(sorted(balance.items()))})
        summary["balances"] = dict(sorted(balance.items()))
    return summary


def _copier(an: _Analysis) -> dict[str, Any] | None:
    inputs = [fa for fa in an.facts if fa.op.f == COPY_INPUT and fa.op.type == OK]
    outputs = [fa for fa in an.facts if fa.op.f == COPY_OUTPUT and fa.op.type == OK]
    if not inputs or not outputs:
        return None
    src, dst = inputs[-1], outputs[-1]       # the final reads
    mapping: Mapping[str, str] = src.op.extra["map"]
    in_reads, out_reads = src.reads, dst.reads
    expected: dict[str, dict[int, tuple[str, int]]] = defaultdict(dict)   # out key -> v -> (in, pos)
    for in_key, pairs in in_reads.items():
        for pos, (_, v) in enumerate(pairs):
            if in_key not in mapping:
                raise HistoryError(f"copy-input key {in_key} has no output key in its map")
            expected[mapping[in_key]][v] = (in_key, pos)
    in_count = sum(len(p) for p in in_reads.values())
    for out_key in set(expected) | set(out_reads):
        got = out_reads.get(out_key, [])
        exp = expected.get(out_key, {})
        counts = Counter(v for _, v in got)
        for v, n in counts.items():
            if n > 1:
                an.found.add("copier-duplicate", {"key": out_key, "value": v, "count": n})
            if v not in exp:
                an.found.add("copier-extra", {"key": out_key, "value": v})
        for v, (in_key, _) in exp.items():
            if v not in counts:
                an.found.add("copier-lost", {"input_key": in_key, "output_key": out_key,
                                             "value": v})
        last_pos: dict[str, tuple[int, int]] = {}
        done: set[int] = set()
        for _, v in got:
            if v not in exp or v in done:
                continue
            done.add(v)
            in_key, pos = exp[v]
            prev = last_pos.get(in_key)
            if prev is not None and pos < prev[0]:
                an.found.add("copier-reorder", {"input_key": in_key, "output_key": out_key,
                                                "values": [prev[1], v]})
            last_pos[in_key] = (pos, v)
    return {"input_records": in_count,
            "output_records": sum(len(p) for p in out_reads.values())}


# --- verdict ------------------------------------------------------------------------------------------
def _stats(an: _Analysis, unseen_per_key: Mapping[str, int]) -> dict[str, Any]:
    by_f: dict[str, Counter[str]] = defaultdict(Counter)
    for fa in an.facts:
        by_f[fa.op.f][fa.op.type] += 1
    sent = sum(len(ws) for ws in an.writer.values())        # distinct (key, value) pairs
    acked = sum(1 for ws in an.writer.values() for w in ws.values() if w.op.type == OK)
    committed = sum(1 for ws in an.writer.values() for w in ws.values() if w.committed)
    proven = sum(1 for fa in an.facts if fa.committed and fa.op.type == INFO)
    return {
        "ops": len(an.facts),
        "by_f": {f: {t: c[t] for t in (OK, FAIL, INFO)} for f, c in sorted(by_f.items())},
        "keys": len(set(an.writer) | set(an.orders)),
        "values_sent": sent,
        "values_acknowledged": acked,
        "values_committed": committed,
        "values_read": sum(len(v) for v in an.ok_read.values()),
        "values_unseen": sum(unseen_per_key.values()),
        "unseen_per_key": dict(sorted(unseen_per_key.items())),
        "info_ops_proven_committed": proven,
    }


def check_ops(ops: Sequence[Op], *, max_examples: int = MAX_EXAMPLES_DEFAULT) -> dict[str, Any]:
    # The analysis allocates millions of small acyclic objects; generational GC passes over
    # them (and over the caller's heap) cost more than the analysis itself.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _check_ops(ops, max_examples)
    finally:
        if enabled:
            gc.enable()


def _check_ops(ops: Sequence[Op], max_examples: int) -> dict[str, Any]:
    an = _Analysis(ops, max_examples)
    _offsets_and_duplicates(an)
    _aborted_garbage_precommitted(an)
    unseen = _lost_and_unseen(an)
    _poll_order(an)
    _internal_order(an)
    _send_order(an)
    _g0(an)
    _g1c(an)
    workloads = {"money": _money(an), "copier": _copier(an)}
    f = an.found
    bad = {n: f.examples[n] for n in sorted(f.counts) if n not in ALLOWED}
    allowed = {n: f.examples[n] for n in sorted(f.counts) if n in ALLOWED}
    return {
        "valid": not bad,
        "anomalies": bad,
        "allowed": allowed,
        "counts": {n: f.counts[n] for n in sorted(f.counts)},
        "stats": _stats(an, unseen),
        "workloads": {k: v for k, v in workloads.items() if v is not None},
    }


def check(events: Iterable[Event], *, max_examples: int = MAX_EXAMPLES_DEFAULT
          ) -> dict[str, Any]:
    """Verdict for a history: {valid, anomalies, allowed, counts, stats, workloads}."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        ops = pair_ops(events)
    finally:
        if enabled:
            gc.enable()
    return check_ops(ops, max_examples=max_examples)


def check_file(path: str | Path, *, max_examples: int = MAX_EXAMPLES_DEFAULT) -> dict[str, Any]:
    return check(read_history(path), max_examples=max_examples)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("history", help="path of the history .jsonl file")
    parser.add_argument("--max-examples", type=int, default=MAX_EXAMPLES_DEFAULT,
                        help="examples kept per anomaly (all are counted)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    """Prints the verdict as JSON. Exit 0: valid, 1: anomalies, 2: unreadable history."""
    try:
        verdict = check_file(args.history, max_examples=args.max_examples)
    except (HistoryError, OSError) as e:
        print(f"cannot check {args.history}: {e}", file=sys.stderr)
        return 2
    json.dump(verdict, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0 if verdict["valid"] else 1


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """`semel check-history HISTORY.jsonl`, for `semel.chaos.commands` to delegate to."""
    _add_arguments(subparsers.add_parser(
        "check-history", help="check a fault-run history for anomalies",
        description=_run.__doc__))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m semel.chaos.checker",
                                     description="Check a Semel fault-run history (JSONL). "
                                     + (_run.__doc__ or ""))
    _add_arguments(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
