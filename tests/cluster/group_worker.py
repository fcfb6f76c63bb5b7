"""A group member in its own process, for the group tests (real processes, killed with SIGKILL).

    python tests/cluster/group_worker.py consume --bootstrap B --group G --topic T [--commit]
        prints one JSON line per event: {"event": "assigned"|"revoked"|"lost", "partitions": [[t, p], ...]},
        {"event": "records", "count": n}; commits after each poll with --commit; exits on stdin EOF
        (leaving the group) or SIGKILL.
    python tests/cluster/group_worker.py copy --bootstrap B --group G --input IN --output OUT
        --txn-id ID [--abort-every 3] [--seed S]
        a transactional copier (consume-transform-produce through semel.client.processing); runs
        until killed or until --idle-exit-s passes with no input.
    python tests/cluster/group_worker.py count --bootstrap B --group G --input IN --output OUT
        --app-id A --state-dir D
        a stateful counter per key (processing API with a state store); output value = running count.
The first line printed is {"event": "started"}.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import random
import sys
import threading

_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def _stdin_closed(stop: threading.Event) -> None:
    sys.stdin.read()
    stop.set()


def consume(a: argparse.Namespace) -> int:
    from semel.client.group import Consumer

    stop = threading.Event()
    threading.Thread(target=_stdin_closed, args=(stop,), daemon=True).start()
    consumer = Consumer(a.bootstrap, group_id=a.group, auto_offset_reset="earliest", enable_auto_commit=False,
                        rebalance_timeout_ms=a.rebalance_timeout_ms)
    consumer.subscribe(
        [a.topic],
        on_assigned=lambda s: emit(event="assigned", partitions=sorted(s)),
        on_revoked=lambda s: emit(event="revoked", partitions=sorted(s)),
        on_lost=lambda s: emit(event="lost", partitions=sorted(s)),
    )
    emit(event="started")
    while not stop.is_set():
        records = consumer.poll(100)
        if records:
            emit(event="records", count=len(records))
            if a.commit:
                consumer.commit()
    consumer.close()
    emit(event="closed")
    return 0


def copy(a: argparse.Namespace) -> int:
    from semel.client.processing import Processor

    rng = random.Random(a.seed)
    txns = [0]

    def transform(record, ctx):  # noqa: ANN001
        ctx.send(a.output, record.value, key=record.key, partition=record.partition)

    def abort_now() -> bool:
        txns[0] += 1
        abort = a.abort_every > 0 and rng.randrange(a.abort_every) == 0
        if abort:
            emit(event="abort")
        return abort

    processor = Processor(a.bootstrap, group_id=a.group, transactional_id=a.txn_id, input_topics=[a.input],
                          process=transform, commit_interval_ms=a.commit_interval_ms, abort_hook=abort_now,
                          consumer_options={"max_poll_records": a.max_poll_records})
    emit(event="started")
    processor.run(idle_exit_s=a.idle_exit_s)
    emit(event="done", transactions=txns[0])
    return 0


def count(a: argparse.Namespace) -> int:
    from semel.client.processing import Processor

    def transform(record, ctx):  # noqa: ANN001
        store = ctx.store
        n = int(store.get(record.key) or b"0") + 1
        store.put(record.key, str(n).encode())
        ctx.send(a.output, str(n).encode(), key=record.key, partition=record.partition)

    processor = Processor(a.bootstrap, group_id=a.group, transactional_id=a.txn_id, input_topics=[a.input],
                          process=transform, commit_interval_ms=a.commit_interval_ms,
                          state_dir=a.state_dir, store_name="counts",
                          consumer_options={"max_poll_records": a.max_poll_records})
    emit(event="started")
    processor.run(idle_exit_s=a.idle_exit_s)
    emit(event="done")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("consume", "copy", "count"):
        p = sub.add_parser(name)
        p.add_argument("--bootstrap", required=True)
        p.add_argument("--group", required=True)
        p.add_argument("--log-level", default="WARNING")
    sub.choices["consume"].add_argument("--topic", required=True)
    sub.choices["consume"].add_argument("--commit", action="store_true")
    sub.choices["consume"].add_argument("--rebalance-timeout-ms", type=int, default=10_000)
    for name in ("copy", "count"):
        p = sub.choices[name]
        p.add_argument("--input", required=True)
        p.add_argument("--output", required=True)
        p.add_argument("--txn-id", required=True)
        p.add_argument("--commit-interval-ms", type=int, default=100)
        p.add_argument("--idle-exit-s", type=float, default=0.0)
        p.add_argument("--max-poll-records", type=int, default=100)
    sub.choices["copy"].add_argument("--abort-every", type=int, default=0)
    sub.choices["copy"].add_argument("--seed", type=int, default=0)
    sub.choices["count"].add_argument("--state-dir", required=True)
    a = ap.parse_args(argv)
    logging.basicConfig(level=getattr(logging, a.log_level), stream=sys.stderr,
                        format="%(asctime)s worker %(levelname)s %(name)s: %(message)s")
    return {"consume": consume, "copy": copy, "count": count}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
