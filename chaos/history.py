"""The history of a fault-injection run: every client operation, recorded twice.

Theory of operation
-------------------
A workload process invokes an operation (event type ``invoke``) and later completes it with
``ok`` (it happened), ``fail`` (it definitely did not happen) or ``info`` (unknown: timeout,
broken connection, failed abort after a commit attempt). A process has at most one operation
outstanding, so a completion pairs with the last invoke of the same process. An invoke with no
completion by the end of the history is an ``info`` operation.

The on-disk form is JSON Lines, one event per line (see docs/chaos-checker.md). Keys are
strings ("t-3"), values are integers unique per key, so a value names the operation that
sent it. Operations that touch the log carry a list of micro-ops:

    ["send", key, value]            invoke      ["send", key, value, offset | null]   completion
    ["poll"]                        invoke      ["poll", {key: [[offset, value], ...]}] completion

This module holds the data model, the parser/validator, a thread-safe writer, a reader and
a builder for hand-made histories. It performs no I/O except reading and writing history
files and has no knowledge of anomalies (that is ``semel.chaos.checker``).

Invariants kept: event indexes are 0, 1, 2, ... in file order; ``time_ns`` never decreases
within one writer; a process never has two outstanding operations.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

# --- event types ----------------------------------------------------------------
INVOKE = "invoke"
OK = "ok"
FAIL = "fail"
INFO = "info"
COMPLETION_TYPES = frozenset({OK, FAIL, INFO})
EVENT_TYPES = COMPLETION_TYPES | {INVOKE}

# --- operation kinds (the event's "f") ----------------------------------------------
SEND = "send"            # one ["send", k, v] micro-op, not transactional
POLL = "poll"            # one or more ["poll"] micro-ops, not transactional
TXN = "txn"              # any micro-ops in one transaction
TRANSFER = "transfer"    # money workload: a txn of two sends (from-leg, to-leg); "transfer" field
ASSIGN = "assign"        # value: list of keys
SUBSCRIBE = "subscribe"  # value: list of keys
CRASH = "crash"          # the client was torn down and will be rebuilt
BALANCE = "balance"      # money workload final read: value {account: [[offset, value], ...]}
COPY_INPUT = "copy-input"    # copier final read of the input: value {key: [[o, v]...]}, "map" field
COPY_OUTPUT = "copy-output"  # copier final read of the output: value {key: [[o, v]...]}

MOP_FS = frozenset({SEND, POLL, TXN, TRANSFER})           # value is a list of micro-ops
FINAL_READ_FS = frozenset({BALANCE, COPY_INPUT, COPY_OUTPUT})  # value is a read map
KEYS_FS = frozenset({ASSIGN, SUBSCRIBE})
KNOWN_FS = MOP_FS | FINAL_READ_FS | KEYS_FS | {CRASH}

ABORTED = "aborted"      # the error of a transaction the workload aborted on purpose

_EVENT_FIELDS = frozenset({"index", "type", "process", "time_ns", "f", "value", "error"})


class HistoryError(ValueError):
    """The history is malformed (a workload bug, not a system anomaly)."""


def _require(cond: bool, fmt: str, *args: Any) -> None:
    """Raises HistoryError; the message is formatted only on failure (hot paths)."""
    if not cond:
        raise HistoryError(fmt % args if args else fmt)


# --- micro-ops ------------------------------------------------------------------------
ReadMap = Mapping[str, tuple[tuple[int | None, int], ...]]


@dataclass(frozen=True, slots=True)
class Send:
    key: str
    value: int
    offset: int | None = None   # None: not acknowledged (invoke, fail, info)


@dataclass(frozen=True, slots=True)
class Poll:
    reads: ReadMap | None = None  # None: the poll did not return (invoke, or unknown)


MicroOp = Send | Poll


def parse_read_map(obj: Any) -> dict[str, tuple[tuple[int | None, int], ...]]:
    """{key: [[offset, value], ...]} -> {key: ((offset, value), ...)} with validation."""
    if not isinstance(obj, Mapping):
        raise HistoryError(f"read map must be an object, got {obj!r}")
    out: dict[str, tuple[tuple[int | None, int], ...]] = {}
    for key, pairs in obj.items():
        if not isinstance(key, str) or not isinstance(pairs, (list, tuple)):
            raise HistoryError(f"reads of {key!r} must be a list under a string key")
        try:
            parsed = tuple([(o, v) for o, v in pairs])
        except (TypeError, ValueError):
            raise HistoryError(f"reads of {key} must be [offset, value] pairs: {pairs!r}") from None
        for o, v in parsed:   # hot loop: final reads hold every record; type() excludes bool
            if type(v) is not int or (o is not None and type(o) is not int):
                raise HistoryError(f"bad read [{o!r}, {v!r}] of {key}")
        out[key] = parsed
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_mop(obj: Any) -> MicroOp:
    # Hot path (every operation): validate with plain ifs, format messages only on error.
    if not isinstance(obj, (list, tuple)) or not obj:
        raise HistoryError(f"bad micro-op {obj!r}")
    kind = obj[0]
    if kind == SEND:
        if len(obj) not in (3, 4):
            raise HistoryError(f"send is [send, key, value(, offset)]: {obj!r}")
        key, value = obj[1], obj[2]
        offset = obj[3] if len(obj) == 4 else None
        if (type(key) is not str or type(value) is not int
                or (offset is not None and type(offset) is not int)):
            raise HistoryError(f"send needs a string key, int value and offset: {obj!r}")
        return Send(key, value, offset)
    if kind == POLL:
        if len(obj) not in (1, 2):
            raise HistoryError(f"poll is [poll(, reads)]: {obj!r}")
        if len(obj) == 1 or obj[1] is None:
            return Poll(None)
        return Poll(parse_read_map(obj[1]))
    raise HistoryError(f"unknown micro-op {obj!r}")


def parse_mops(value: Any) -> tuple[MicroOp, ...]:
    if not isinstance(value, (list, tuple)):
        raise HistoryError(f"micro-ops must be a list, got {value!r}")
    return tuple([parse_mop(m) for m in value])


# --- events -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Event:
    index: int
    type: str
    process: int
    time_ns: int
    f: str
    value: Any = None
    error: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # workload-specific fields

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "index": self.index, "type": self.type, "process": self.process,
            "time_ns": self.time_ns, "f": self.f, "value": self.value,
        }
        if self.error is not None:
            obj["error"] = self.error
        obj.update(self.extra)
        return obj

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Event:
        _require(isinstance(obj, Mapping), "event must be an object: %r", obj)
        for name in ("index", "type", "process", "time_ns", "f"):
            _require(name in obj, "event lacks %r: %r", name, obj)
        _require(obj["type"] in EVENT_TYPES, "bad event type: %r", obj)
        _require(_is_int(obj["index"]) and _is_int(obj["process"]) and _is_int(obj["time_ns"]),
                 "index, process and time_ns are integers: %r", obj)
        _require(isinstance(obj["f"], str), "f must be a string: %r", obj)
        error = obj.get("error")
        _require(error is None or isinstance(error, str), "error must be a string: %r", obj)
        extra = {k: v for k, v in obj.items() if k not in _EVENT_FIELDS}
        return cls(obj["index"], obj["type"], obj["process"], obj["time_ns"], obj["f"],
                   obj.get("value"), error, extra)


def encode_event(event: Event) -> str:
    return json.dumps(event.to_json(), separators=(",", ":"), sort_keys=True)


# --- operations: invoke + completion -------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Op:
    """One operation: its invoke paired with its completion (or none: then type is info)."""

    index: int                   # the invoke event's index: the operation's id
    process: int
    f: str
    type: str                    # ok / fail / info
    invoke_time_ns: int
    complete_index: int | None   # None: never completed
    complete_time_ns: int | None
    value: Any                   # the completion's value, else the invoke's
    error: str | None
    extra: Mapping[str, Any]
    mops: tuple[MicroOp, ...] = ()   # parsed from value (send/poll/txn/transfer/final reads)

    @property
    def order(self) -> int:
        """Position of the completion in the history (never-completed ops sort last)."""
        return self.complete_index if self.complete_index is not None else 1 << 62



def _parse_value(f: str, value: Any) -> tuple[MicroOp, ...]:
    if f in MOP_FS:
        return parse_mops(value)
    if f in FINAL_READ_FS:
        return (Poll(parse_read_map(value)) if value is not None else Poll(None),)
    return ()


def pair_ops(events: Iterable[Event]) -> list[Op]:
    """Pairs invokes with completions; validates the per-process discipline and op shapes."""
    pending: dict[int, Event] = {}
    ops: list[Op] = []
    expected_index = 0
    for ev in events:
        _require(ev.index == expected_index, "event index %d, expected %d", ev.index,
                 expected_index)
        expected_index += 1
        if ev.type == INVOKE:
            _require(ev.process not in pending, "process %d invoked %d with %r outstanding",
                     ev.process, ev.index, pending.get(ev.process))
            pending[ev.process] = ev
            continue
        inv = pending.pop(ev.process, None)
        _require(inv is not None, "completion %d of process %d has no invoke", ev.index,
                 ev.process)
        assert inv is not None
        _require(inv.f == ev.f, "completion %d is %s, invoke %d is %s", ev.index, ev.f,
                 inv.index, inv.f)
        value = ev.value if ev.value is not None else inv.value
        extra = {**inv.extra, **ev.extra} if ev.extra else inv.extra
        ops.append(_checked_op(Op(inv.index, ev.process, ev.f, ev.type, inv.time_ns, ev.index,
                                  ev.time_ns, value, ev.error, extra,
                                  _parse_value(ev.f, value))))
    for inv in pending.values():
        ops.append(_checked_op(Op(inv.index, inv.process, inv.f, INFO, inv.time_ns, None, None,
                                  inv.value, "never completed", dict(inv.extra),
                                  _parse_value(inv.f, inv.value))))
    ops.sort(key=lambda op: op.index)
    return ops


def _checked_op(op: Op) -> Op:
    """Validates the shape of each kind of operation (micro-ops are already parsed)."""
    mops = op.mops
    if op.f == SEND:
        _require(len(mops) == 1 and isinstance(mops[0], Send), "send op %d: one send", op.index)
    elif op.f == POLL:
        _require(all(isinstance(m, Poll) for m in mops), "poll op %d: polls only", op.index)
    elif op.f == TRANSFER:
        t = op.extra.get("transfer")
        _require(isinstance(t, Mapping) and {"from", "to", "amount"} <= set(t),
                 "transfer op %d lacks its transfer field", op.index)
        assert isinstance(t, Mapping)
        _require(len(mops) == 2 and all(isinstance(m, Send) for m in mops)
                 and [m.key for m in mops if isinstance(m, Send)] == [t["from"], t["to"]]
                 and t["from"] != t["to"] and _is_int(t["amount"]),
                 "transfer op %d: two sends, from-leg then to-leg", op.index)
    elif op.f in KEYS_FS:
        _require(isinstance(op.value, list) and all(isinstance(k, str) for k in op.value),
                 "%s op %d: value is a list of keys", op.f, op.index)
    elif op.f == COPY_INPUT and op.type == OK:
        m = op.extra.get("map")
        _require(isinstance(m, Mapping), "copy-input op %d lacks its map field", op.index)
    return op


# --- reading and writing files ---------------------------------------------------------------
def iter_events(lines: Iterable[str]) -> Iterator[Event]:
    """Parses JSONL. A torn final line (the writer was killed mid-write) is ignored."""
    buffered: str | None = None
    for line in lines:
        if buffered is not None:
            yield _parse_line(buffered)
        buffered = line
    if buffered is None:
        return
    if buffered.endswith("\n"):
        yield _parse_line(buffered)
        return
    try:
        event = _parse_line(buffered)
    except HistoryError:
        return
    yield event


def _parse_line(line: str) -> Event:
    line = line.strip()
    _require(bool(line), "empty line in history")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise HistoryError(f"not JSON: {line[:200]!r}: {e}") from None
    return Event.from_json(obj)


def read_history(path: str | Path) -> list[Event]:
    with open(path, encoding="utf-8") as fh:
        return list(iter_events(fh))


def write_history(path: str | Path, events: Iterable[Event]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for ev in events:
            fh.write(encode_event(ev) + "\n")


class HistoryWriter:
    """Appends events to a new JSONL file, thread-safely, one flushed line per event.

    Indexes and times are assigned under the lock, so file order is index order and time
    never goes back. ``clock_ns`` is injectable for tests.
    """

    def __init__(self, path: str | Path,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self._fh: TextIO = open(path, "x", encoding="utf-8")
        self._clock_ns = clock_ns
        self._start_ns = clock_ns()
        self._lock = threading.Lock()
        self._next_index = 0
        self._pending: dict[int, str] = {}   # process -> f of its outstanding op

    def invoke(self, process: int, f: str, value: Any = None, **extra: Any) -> Event:
        with self._lock:
            _require(process not in self._pending, "process %d already has an op open", process)
            self._pending[process] = f
            return self._append(INVOKE, process, f, value, None, extra)

    def complete(self, process: int, type: str, value: Any = None,
                 error: str | None = None, **extra: Any) -> Event:
        _require(type in COMPLETION_TYPES, "bad completion type %r", type)
        with self._lock:
            f = self._pending.pop(process, None)
            _require(f is not None, "process %d has no open op", process)
            assert f is not None
            return self._append(type, process, f, value, error, extra)

    def _append(self, type: str, process: int, f: str, value: Any, error: str | None,
                extra: Mapping[str, Any]) -> Event:
        now_ns = max(0, self._clock_ns() - self._start_ns)
        event = Event(self._next_index, type, process, now_ns, f, value, error, dict(extra))
        self._fh.write(encode_event(event) + "\n")
        self._fh.flush()
        self._next_index += 1
        return event

    def close(self) -> None:
        with self._lock:
            self._fh.close()

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- a builder for hand-made histories ---------------------------------------------------------
SendSpec = tuple[str, str, int] | tuple[str, str, int, int | None]   # ("send", k, v[, offset])
PollSpec = tuple[str, Mapping[str, Sequence[tuple[int | None, int]]]]  # ("poll", {k: [(o, v)]})


def txn_value(mops: Sequence[SendSpec | PollSpec]) -> list[Any]:
    """Completion value of a txn from Python tuples."""
    out: list[Any] = []
    for m in mops:
        if m[0] == SEND and len(m) > 2:  # (the length tells mypy which tuple it is)
            out.append([SEND, m[1], m[2], m[3] if len(m) == 4 else None])
        else:
            reads = m[1]
            assert isinstance(reads, Mapping)
            out.append([POLL, {k: [list(p) for p in pairs] for k, pairs in reads.items()}])
    return out


def txn_invoke_value(mops: Sequence[SendSpec | PollSpec]) -> list[Any]:
    return [[SEND, m[1], m[2]] if m[0] == SEND and len(m) > 2 else [POLL] for m in mops]


class HistoryBuilder:
    """Builds histories in memory: each helper records an invoke and its completion.

    For concurrency use ``invoke`` and ``complete`` directly. Times advance 1000 ns per event.
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._open: dict[int, str] = {}

    def invoke(self, process: int, f: str, value: Any = None, **extra: Any) -> HistoryBuilder:
        _require(process not in self._open, "process %d already has an op open", process)
        self._open[process] = f
        return self._add(INVOKE, process, f, value, None, extra)

    def complete(self, process: int, type: str = OK, value: Any = None,
                 error: str | None = None, **extra: Any) -> HistoryBuilder:
        f = self._open.pop(process)
        return self._add(type, process, f, value, error, extra)

    def _add(self, type: str, process: int, f: str, value: Any, error: str | None,
             extra: Mapping[str, Any]) -> HistoryBuilder:
        i = len(self.events)
        self.events.append(Event(i, type, process, i * 1000, f, value, error, dict(extra)))
        return self

    def op(self, process: int, f: str, invoke_value: Any, type: str = OK, value: Any = None,
           error: str | None = None, **extra: Any) -> HistoryBuilder:
        self.invoke(process, f, invoke_value, **extra)
        return self.complete(process, type, value, error)

    def send(self, process: int, key: str, value: int, offset: int | None = None,
             type: str = OK) -> HistoryBuilder:
        return self.op(process, SEND, [[SEND, key, value]], type, [[SEND, key, value, offset]])

    def poll(self, process: int, reads: Mapping[str, Sequence[tuple[int | None, int]]],
             type: str = OK) -> HistoryBuilder:
        return self.op(process, POLL, [[POLL]], type, txn_value([(POLL, reads)]))

    def txn(self, process: int, mops: Sequence[SendSpec | PollSpec], type: str = OK,
            error: str | None = None, f: str = TXN, **extra: Any) -> HistoryBuilder:
        if type == FAIL and error is None:
            error = ABORTED
        return self.op(process, f, txn_invoke_value(mops), type, txn_value(mops), error,
                       **extra)

    def assign(self, process: int, keys: Sequence[str], type: str = OK) -> HistoryBuilder:
        return self.op(process, ASSIGN, list(keys), type, list(keys))

    def subscribe(self, process: int, keys: Sequence[str], type: str = OK) -> HistoryBuilder:
        return self.op(process, SUBSCRIBE, list(keys), type, list(keys))

    def crash(self, process: int) -> HistoryBuilder:
        return self.op(process, CRASH, None, INFO, None)

    def transfer(self, process: int, from_key: str, to_key: str, amount: int,
                 from_value: int, to_value: int,
                 offsets: tuple[int | None, int | None] = (None, None),
                 type: str = OK, error: str | None = None) -> HistoryBuilder:
        mops: list[SendSpec] = [(SEND, from_key, from_value, offsets[0]),
                                (SEND, to_key, to_value, offsets[1])]
        return self.txn(process, mops, type, error, f=TRANSFER,
                        transfer={"from": from_key, "to": to_key, "amount": amount})

    def final_read(self, process: int, f: str,
                   reads: Mapping[str, Sequence[tuple[int | None, int]]],
                   type: str = OK, **extra: Any) -> HistoryBuilder:
        _require(f in FINAL_READ_FS, "%s is not a final read", f)
        value = {k: [list(p) for p in pairs] for k, pairs in reads.items()}
        return self.op(process, f, None, type, value, **extra)

    def balance(self, process: int,
                reads: Mapping[str, Sequence[tuple[int | None, int]]]) -> HistoryBuilder:
        return self.final_read(process, BALANCE, reads)

    def copy_input(self, process: int, reads: Mapping[str, Sequence[tuple[int | None, int]]],
                   mapping: Mapping[str, str]) -> HistoryBuilder:
        return self.final_read(process, COPY_INPUT, reads, map=dict(mapping))

    def copy_output(self, process: int,
                    reads: Mapping[str, Sequence[tuple[int | None, int]]]) -> HistoryBuilder:
        return self.final_read(process, COPY_OUTPUT, reads)

    def write(self, path: str | Path) -> None:
        write_history(path, self.events)
