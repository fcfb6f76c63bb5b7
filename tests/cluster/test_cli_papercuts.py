"""The CLI papercuts a new user hit running the README (issue 18), each against a real cluster:
the `semel` command as a subprocess, real broker processes (`shared_cluster`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from semel.client import errors as client_errors
from semel.client.metadata import parse_bootstrap

SEMEL = [sys.executable, "-m", "semel.cli"]


def _cli(bootstrap: str, *args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, SEMEL_BOOTSTRAP=bootstrap)
    return subprocess.run([*SEMEL, *args], input=stdin, capture_output=True, env=env, timeout=timeout)


@pytest.mark.parametrize(("address", "says"), [
    ("http://127.0.0.1:9092", "drop http://"),
    ("grpc://broker-1:9092/", "drop grpc://"),
    ("::1:9092", "IPv6 address goes in brackets"),
    ("[zz]:9092", "not an IPv6 address"),
    ("127.0.0.1:http", "port must be a number"),
    ("127.0.0.1:0", "port must be a number"),
    ("my host:9092", "not a host name"),
    ("broker/1:9092", "not a host name"),
    ("127.0.0.1", "expected HOST:PORT"),
])
def test_malformed_bootstrap_addresses_are_refused_with_the_reason(address: str, says: str) -> None:
    with pytest.raises(client_errors.ConfigError) as info:
        parse_bootstrap(address)
    assert says in str(info.value)


def test_well_formed_bootstrap_addresses_pass() -> None:
    items = ["127.0.0.1:9092", "localhost:1", "broker-1.semel.svc.cluster.local:9092", "[::1]:9092", "kafka_1:9092"]
    assert parse_bootstrap(",".join(items)) == items


def test_cli_refuses_a_url_bootstrap_at_once(shared_cluster) -> None:
    # Before: gRPC tried to resolve "http://127.0.0.1" for 6 s and said "unknown host", exit 1.
    url = f"http://{shared_cluster.bootstrap.split(',')[0]}"
    out = _cli(url, "topic", "list")
    assert out.returncode == 2, out.stderr
    assert b"Traceback" not in out.stderr and b"drop http://" in out.stderr


@pytest.mark.parametrize("argv", [
    ["consume", "t", "--bogus"], ["topic", "create", "t", "--bogus"], ["cluster", "up", "--bogus"], ["produce", "t", "x"],
])
def test_an_unknown_argument_prints_the_usage_of_its_own_subcommand(argv: list[str]) -> None:
    out = subprocess.run([*SEMEL, *argv], capture_output=True, timeout=60)
    command = " ".join(a for a in argv[:2] if a not in ("t", "x") and not a.startswith("-"))
    assert out.returncode == 2
    assert out.stderr.decode().startswith(f"usage: semel {command} "), out.stderr
    assert f"semel {command}: error: unrecognized arguments: {argv[-1]}" in out.stderr.decode()


def test_output_piped_into_head_stops_quietly() -> None:
    """`semel ... | head -1`: the closed pipe ends the command with 141 (as a shell reports
    SIGPIPE) and no traceback."""
    # a fault schedule of ~200 KB: far more than a pipe's buffer, so the writer must meet the close
    proc = subprocess.Popen([*SEMEL, "chaos", "schedule", "--seed", "1", "--duration-s", "40000", "--nemesis", "all"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away before the listing ends
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert first.startswith(b"seed 1: ")
    assert b"Traceback" not in err, err


def test_consume_offset_relative_named_and_out_of_range(shared_cluster) -> None:
    bootstrap = shared_cluster.bootstrap
    assert _cli(bootstrap, "topic", "create", "offsets", "--partitions", "1").returncode == 0
    shared_cluster.leader_of("offsets", 0, timeout_s=30)
    assert _cli(bootstrap, "produce", "offsets", stdin=b"a\nb\nc\nd\n").returncode == 0

    def consume(offset: str) -> subprocess.CompletedProcess:
        return _cli(bootstrap, "consume", "offsets", "--partition", "0", "--offset", offset, "--timeout-ms", "1500")

    last_two = consume("-2")  # kcat's / rpk's "-N": N records before the end
    assert (last_two.returncode, last_two.stdout) == (0, b"c\nd\n"), last_two.stderr
    assert consume("-50").stdout == b"a\nb\nc\nd\n"  # clamped to the log start
    assert consume("earliest").stdout == b"a\nb\nc\nd\n"
    assert consume("1").stdout == b"b\nc\nd\n"
    assert (consume("4").returncode, consume("latest").stdout) == (0, b"")  # the log end: waits for the next record
    past = consume("1000")  # before: reset to the end silently, printed nothing, exit 0
    assert past.returncode == 1 and past.stdout == b""
    assert b"offset 1000 is past the end: offsets-0 holds offsets 0..3 (log end 4)" in past.stderr, past.stderr
    bad = consume("abc")
    assert bad.returncode == 2 and b"--offset takes N, -N" in bad.stderr
    assert b"seek_to" not in bad.stderr + past.stderr  # no Python API names in the CLI's words


def _timed(bootstrap: str, *args: str, stdin: bytes | None = None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    out = _cli(bootstrap, *args, stdin=stdin, timeout=120)
    return out, time.monotonic() - start


def test_a_missing_topic_fails_fast_with_the_command_that_creates_it(shared_cluster) -> None:
    bootstrap = shared_cluster.bootstrap
    baseline = _timed(bootstrap, "topic", "list")[1]  # starting the CLI and one round trip, on this machine now
    # Before: produce waited --max-block-ms (here 60 s), consume 10 s whatever --timeout-ms said, delete
    # retried "no such topic" for --timeout-ms; and none of them said how to create the topic.
    produced, produce_s = _timed(bootstrap, "produce", "no-such-topic", "--max-block-ms", "60000", stdin=b"x\n")
    assert produced.returncode == 1 and b"Traceback" not in produced.stderr
    assert b"topic 'no-such-topic' does not exist; create it with: semel topic create no-such-topic" in produced.stderr
    consumed, consume_s = _timed(bootstrap, "consume", "no-such-topic", "--timeout-ms", "2000")
    assert consumed.returncode == 1 and b"semel topic create no-such-topic" in consumed.stderr, consumed.stderr
    deleted, delete_s = _timed(bootstrap, "topic", "delete", "no-such-topic", "--timeout-ms", "60000")
    assert deleted.returncode == 1 and b"no such topic" in deleted.stderr, deleted.stderr
    # the CLI's wait for a topic nobody knows is UNKNOWN_TOPIC_WAIT_MS (2 s); generous for the shared CPU
    assert produce_s < baseline + 15, (produce_s, baseline)
    assert consume_s < baseline + 6, (consume_s, baseline)
    assert delete_s < baseline + 15, (delete_s, baseline)


def test_a_topic_created_a_moment_ago_through_another_broker_is_produced_to(shared_cluster) -> None:
    first, *_, last = shared_cluster.bootstrap.split(",")
    assert _cli(first, "topic", "create", "just-made", "--partitions", "2").returncode == 0
    produced = _cli(last, "produce", "just-made", stdin=b"one\ntwo\n")  # the grace covers metadata propagation
    assert produced.returncode == 0, produced.stderr
    consumed = _cli(last, "consume", "just-made", "--from-beginning", "--max-messages", "2", "--timeout-ms", "20000")
    assert sorted(consumed.stdout.split()) == [b"one", b"two"]


def _unread_bytes(pipe) -> int:
    import fcntl
    import struct
    import termios

    return struct.unpack("i", fcntl.ioctl(pipe.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


@pytest.mark.slow
def test_ctrl_c_during_produce_reports_acknowledged_and_unknown_never_failed(shared_cluster) -> None:
    import signal

    from semel.client import Consumer

    # One replica: while its broker is paused nothing can acknowledge the later records.
    shared_cluster.create_topic("interrupted", partitions=1, replication_factor=1)
    leader = shared_cluster.leader_of("interrupted", 0, timeout_s=30)
    env = dict(os.environ, SEMEL_BOOTSTRAP=shared_cluster.bootstrap)
    # SIGINT as a terminal gives it: a suite started in the background (nohup, `&`) passes an
    # ignored SIGINT down, and Python then installs no KeyboardInterrupt handler in the child
    proc = subprocess.Popen([*SEMEL, "produce", "interrupted"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdin is not None
    paused = False
    try:
        proc.stdin.write(b"a\nb\nc\n")
        proc.stdin.flush()
        with Consumer(shared_cluster.bootstrap, auto_offset_reset="earliest") as consumer:
            consumer.assign([("interrupted", 0)])
            stored: list[bytes] = []
            deadline = time.monotonic() + 60
            while len(stored) < 3 and time.monotonic() < deadline:
                stored += [r.value for r in consumer.poll(1000)]
            assert stored == [b"a", b"b", b"c"]  # acks=all on one replica: these three are acknowledged
        shared_cluster.pause(leader)
        paused = True
        proc.stdin.write(b"d\ne\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        while _unread_bytes(proc.stdin) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.stdin.close()  # end of input: the command flushes, waiting on the paused broker
        time.sleep(1.0)  # let it hand the two lines it read to the producer (sent, never answered)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        assert proc.stderr is not None
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        if paused:
            shared_cluster.resume(leader)
    text = err.decode()
    # Before: "semel produce: error: produce request cancelled ..." for records that may be stored.
    assert proc.returncode == 130, text
    assert "error" not in text and "Traceback" not in text, text
    import re

    report = re.search(r"interrupted: (\d+) of 5 record\(s\) acknowledged, 0 not written, (\d+) with outcome unknown",
                       text)
    assert report, text
    acked, unknown = int(report[1]), int(report[2])
    # a, b and c are stored, but an answer still on its way when the broker stopped is not an
    # acknowledgement: those count as unknown too. d and e reached no replica that could answer.
    assert acked + unknown == 5 and unknown >= 2, text
    shared_cluster.settle()  # the next tests share this cluster
    with Consumer(shared_cluster.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([("interrupted", 0)])
        values: list[bytes] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            values += [r.value for r in consumer.poll(1000)]
    assert values[:3] == [b"a", b"b", b"c"] and set(values[3:]) <= {b"d", b"e"}  # the unknown two: either way
    assert len(values) >= acked


def test_progress_rewrites_one_status_line_on_a_terminal_and_prints_plain_lines_elsewhere() -> None:
    import io
    import pty

    from semel.cluster.tooling.progress import CLEAR_LINE, Progress, status_text

    assert status_text("x", 15, 60) == "[#####---------------]  25%    15/60 s, 45 s left  x"
    assert status_text("x", 3, None) == "[   3.0 s] x"
    plain = io.StringIO()  # not a terminal: every update a line of its own, no escape codes
    p = Progress(plain)
    p.say("phase one")
    p.status("  sent 10 records")
    p.status("  sent 20 records")
    p.done()
    assert plain.getvalue() == "phase one\n  sent 10 records\n  sent 20 records\n"
    master, slave = pty.openpty()
    try:
        with open(slave, "w", closefd=False) as tty:
            t = Progress(tty)
            assert t.terminal
            t.phase(10)
            t.status("sent 10 records")
            t.status("sent 20 records")
            t.say("a line that stays")
            t.done()
        out = ""
        while "a line that stays" not in out:  # a pty hands the bytes over in pieces
            out += os.read(master, 4096).decode()
    finally:
        os.close(master)
        os.close(slave)
    assert out.count(CLEAR_LINE) == 3 and "\n" not in out.split("a line that stays")[0].replace("\r\n", "")
    assert "sent 20 records" in out and out.rstrip().endswith("a line that stays")


@pytest.mark.slow
def test_bench_shows_a_live_status_line_on_a_terminal(shared_cluster) -> None:
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen([*SEMEL, "bench", "txn-cost", "--bootstrap", shared_cluster.bootstrap, "--duration-s", "3",
                             "--partitions", "1", "--replication-factor", "1"],
                            stdout=subprocess.PIPE, stderr=slave, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    os.close(slave)
    seen = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 120)
            assert ready, "bench printed nothing for 120 s"
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the process closed its end
                break
            if not chunk:
                break
            seen += chunk
        stdout, _ = proc.communicate(timeout=120)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, seen.decode(errors="replace")
    text = seen.decode(errors="replace")
    assert "\r\x1b[K[" in text and "transactions committed" in text and "s left" in text, text
    assert stdout.decode().strip().splitlines()[-1].startswith("{")  # the result stays one JSON line on stdout


def test_consume_says_so_when_its_topic_is_deleted_under_it(shared_cluster) -> None:
    # Before: the fetches failed as retriable, the consumer refreshed and polled on, and the
    # command exited 0 at --timeout-ms as if the topic had merely gone quiet.
    bootstrap = shared_cluster.bootstrap
    assert _cli(bootstrap, "topic", "create", "vanishing", "--partitions", "1").returncode == 0
    assert _cli(bootstrap, "produce", "vanishing", stdin=b"one\ntwo\n").returncode == 0
    env = dict(os.environ, SEMEL_BOOTSTRAP=bootstrap)
    consumer = subprocess.Popen([*SEMEL, "consume", "vanishing", "--from-beginning", "--timeout-ms", "30000"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert consumer.stdout is not None
        assert [consumer.stdout.readline(), consumer.stdout.readline()] == [b"one\n", b"two\n"]  # it is consuming
        assert _cli(bootstrap, "topic", "delete", "vanishing").returncode == 0
        _, stderr = consumer.communicate(timeout=120)
    finally:
        consumer.kill()
        consumer.wait()
    assert consumer.returncode == 1, stderr
    assert b"topic 'vanishing' was deleted while consuming (2 records printed)" in stderr, stderr
    assert b"Traceback" not in stderr
