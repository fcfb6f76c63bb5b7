"""The history format: writer, reader, pairing and validation."""

from __future__ import annotations

import json
import threading

import pytest
from semel.chaos.history import (
    FAIL,
    INFO,
    OK,
    Event,
    HistoryBuilder,
    HistoryError,
    HistoryWriter,
    Poll,
    Send,
    iter_events,
    pair_ops,
    read_history,
)


class FakeClock:
    def __init__(self) -> None:
        self.now_ns = 1_000

    def __call__(self) -> int:
        self.now_ns += 10
        return self.now_ns


def test_writer_round_trips_through_the_reader(tmp_path):
    path = tmp_path / "h.jsonl"
    with HistoryWriter(path, clock_ns=FakeClock()) as w:
        w.invoke(0, "send", [["send", "t-0", 1]])
        w.invoke(1, "txn", [["send", "t-1", 1], ["poll"]])
        w.complete(0, OK, [["send", "t-0", 1, 0]])
        w.complete(1, FAIL, [["send", "t-1", 1, 0], ["poll", {"t-0": [[0, 1]]}]], error="aborted")
        w.invoke(2, "transfer", [["send", "a", 1], ["send", "b", 1]],
                 transfer={"from": "a", "to": "b", "amount": 3})
        w.complete(2, INFO, None, error="timeout")
    lines = path.read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line)["index"] == i for i, line in enumerate(lines))
    events = read_history(path)
    assert [e.time_ns for e in events] == [10, 20, 30, 40, 50, 60]
    ops = pair_ops(events)
    assert [(o.index, o.f, o.type) for o in ops] == [(0, "send", OK), (1, "txn", FAIL),
                                                     (4, "transfer", INFO)]
    assert ops[0].mops == (Send("t-0", 1, 0),)
    assert ops[1].error == "aborted" and ops[1].mops[1] == Poll({"t-0": ((0, 1),)})
    assert ops[2].extra["transfer"]["amount"] == 3
    assert ops[2].mops == (Send("a", 1), Send("b", 1))     # info: the invoke's micro-ops


def test_writer_refuses_protocol_errors_and_existing_files(tmp_path):
    path = tmp_path / "h.jsonl"
    with HistoryWriter(path) as w:
        w.invoke(0, "poll", [["poll"]])
        with pytest.raises(HistoryError):
            w.invoke(0, "poll", [["poll"]])
        with pytest.raises(HistoryError):
            w.complete(1, OK)
        with pytest.raises(HistoryError):
            w.complete(0, "done")
    with pytest.raises(FileExistsError):
        HistoryWriter(path)


def test_writer_is_thread_safe(tmp_path):
    path = tmp_path / "h.jsonl"
    with HistoryWriter(path) as w:
        def worker(p: int) -> None:
            for i in range(200):
                w.invoke(p, "send", [["send", f"t-{p}", i]])
                w.complete(p, OK, [["send", f"t-{p}", i, i]])
        threads = [threading.Thread(target=worker, args=(p,)) for p in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    events = read_history(path)
    assert [e.index for e in events] == list(range(1600))
    assert all(a.time_ns <= b.time_ns for a, b in zip(events, events[1:]))
    assert len(pair_ops(events)) == 800


def test_torn_last_line_is_ignored_but_a_torn_middle_line_is_an_error():
    good = HistoryBuilder().send(0, "t-0", 1, 0).events
    lines = [json.dumps(e.to_json()) + "\n" for e in good]
    assert len(list(iter_events(lines + ['{"index": 2, "ty']))) == 2
    with pytest.raises(HistoryError):
        list(iter_events([lines[0], '{"index": 1, "ty\n', lines[1]]))


def test_never_completed_invoke_becomes_info():
    b = HistoryBuilder().invoke(3, "poll", [["poll"]])
    (op,) = pair_ops(b.events)
    assert op.type == INFO and op.complete_index is None and op.mops == (Poll(None),)


@pytest.mark.parametrize("bad", [
    [Event(0, OK, 0, 0, "send", [["send", "k", 1, 0]])],                       # no invoke
    [Event(0, "invoke", 0, 0, "send", [["send", "k", 1]]),
     Event(1, OK, 0, 1, "poll", [["poll", {}]])],                              # f mismatch
    [Event(1, "invoke", 0, 0, "poll", [["poll"]])],                            # index gap
    [Event(0, "invoke", 0, 0, "send", [["send", "k", "one"]])],                # value type
    [Event(0, "invoke", 0, 0, "send", [["send", "k", 1], ["send", "k", 2]])],  # two sends
    [Event(0, "invoke", 0, 0, "poll", [["poll"]]),
     Event(1, OK, 0, 1, "poll", [["poll", {"k": [[0]]}]])],                    # bad pair
    [Event(0, "invoke", 0, 0, "poll", [["poll"]]),
     Event(1, OK, 0, 1, "poll", [["poll", {"k": [[0, True]]}]])],              # bool value
    [Event(0, "invoke", 0, 0, "assign", "t-0")],                               # not a list
    [Event(0, "invoke", 0, 0, "transfer", [["send", "a", 1], ["send", "b", 1]])],  # no field
    [Event(0, "invoke", 0, 0, "txn", [["append", "k", 1]])],                   # unknown mop
])
def test_malformed_histories_are_rejected(bad):
    with pytest.raises(HistoryError):
        pair_ops(bad)


def test_event_json_keeps_extra_fields():
    ev = Event(0, OK, 2, 5, "copy-input", {"in": [[0, 1]]}, None, {"map": {"in": "out"}})
    obj = ev.to_json()
    assert obj["map"] == {"in": "out"} and "error" not in obj
    assert Event.from_json(obj) == ev
    with pytest.raises(HistoryError):
        Event.from_json({"index": 0, "type": "done", "process": 0, "time_ns": 0, "f": "x"})
