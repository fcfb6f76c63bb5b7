"""The package root's shared primitives (proto/semel/): invariant, clocks, backoff, limits."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from semel import limits
from semel.backoff import backoff_ms
from semel.clock import TEST_OFFSET_ENV, monotonic_ms, steady_wall_ms, wall_clock_ms
from semel.invariant import invariant, not_none
from semel.topic_partition import TopicPartition


def test_invariant_and_not_none_raise_assertion_error_even_under_python_O():
    code = ("from semel.invariant import invariant, not_none\n"
            "for check in (lambda: invariant(False, 'inv'), lambda: not_none(None, 'nn')):\n"
            "    try:\n        check()\n    except AssertionError as e:\n        print(e)\n")
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["inv", "nn"]


def test_not_none_returns_the_value_and_invariant_passes_on_true():
    invariant(True, "never raised")
    assert not_none(0, "zero is not None") == 0
    with pytest.raises(AssertionError, match="missing"):
        not_none(None, "missing")


def test_the_two_clocks_are_the_wall_clock_and_the_monotonic_clock():
    assert abs(wall_clock_ms() - time.time() * 1000) < 1000
    assert abs(monotonic_ms() - time.monotonic() * 1000) < 1000
    a = monotonic_ms()
    assert monotonic_ms() >= a


def test_steady_wall_never_runs_ahead_of_the_monotonic_clock_since_the_anchor():
    anchor = (1_000_000, 50)
    assert steady_wall_ms(1_000_100, 150, *anchor) == 1_000_100  # both clocks agree
    assert steady_wall_ms(1_000_100 + 600_000, 150, *anchor) == 1_000_100, "a forward step is ignored"
    assert steady_wall_ms(1_000_100 - 600_000, 150, *anchor) == 1_000_100 - 600_000, "a backward step delays"


def test_the_test_only_wall_clock_offset_steps_only_the_wall_clock(tmp_path):
    """Off unless SEMEL_TEST_WALL_CLOCK_OFFSET=1; when on, the file's offset is added to the wall
    clock, re-read at run time (forward and back), and the monotonic clock never moves."""
    code = ("import sys, time\nfrom pathlib import Path\nfrom semel import clock\n"
            "path = Path(sys.argv[1])\n"
            "clock.write_test_offset(path, 600_000)\n"
            "print(clock.enable_test_offset(path))\n"
            "print(round((clock.wall_clock_ms() - time.time() * 1000) / 60_000))\n"
            "m0, t0 = clock.monotonic_ms(), time.monotonic() * 1000\n"
            "clock.write_test_offset(path, -600_000)\n"
            "deadline = time.monotonic() + 30\n"
            "while clock.wall_clock_ms() - time.time() * 1000 > 0 and time.monotonic() < deadline:\n"
            "    time.sleep(0.01)\n"
            "print(round((clock.wall_clock_ms() - time.time() * 1000) / 60_000))\n"
            "print(abs((clock.monotonic_ms() - m0) - (time.monotonic() * 1000 - t0)) < 1000)\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != TEST_OFFSET_ENV}
    off = subprocess.run([sys.executable, "-c", code, str(tmp_path / "off")], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    assert off[:2] == ["False", "0"], "off by default: the file is ignored"
    on = subprocess.run([sys.executable, "-c", code, str(tmp_path / "on")], capture_output=True, text=True,
                        check=True, env={**env, TEST_OFFSET_ENV: "1"})
    assert on.stdout.split() == ["True", "10", "-10", "True"]
    assert "TEST ONLY" in on.stderr and "never use this in production" in on.stderr
    bad = subprocess.run([sys.executable, "-c", code, str(tmp_path / "bad")], capture_output=True, text=True,
                         env={**env, TEST_OFFSET_ENV: "yes"})
    assert bad.returncode != 0 and "only 1 turns" in bad.stderr


@pytest.mark.parametrize("attempt, expected", [(-1, 100), (0, 100), (1, 100), (2, 200), (3, 400), (4, 800), (5, 1000),
                                               (10_000, 1000)])
def test_backoff_doubles_per_attempt_from_the_first_retry_up_to_its_cap(attempt, expected):
    assert backoff_ms(attempt, 100, 1000) == expected


def test_topic_partition_is_a_tuple_that_sorts_by_topic_then_partition():
    tps = [TopicPartition("b", 0), TopicPartition("a", 2), TopicPartition("a", 1)]
    assert sorted(tps) == [("a", 1), ("a", 2), ("b", 0)]
    topic, partition = tps[0]
    assert (topic, partition) == ("b", 0) and {tps[0]: 1}[("b", 0)] == 1


def test_limits_check_their_relationships_at_import():
    limits._check_relationships()  # the import already ran it; a broken relationship raises:
    saved = limits.BROKER_DISCONNECT_GRACE_MS_DEFAULT
    try:
        limits.BROKER_DISCONNECT_GRACE_MS_DEFAULT = limits.BROKER_SESSION_TIMEOUT_MS_DEFAULT
        with pytest.raises(AssertionError, match="grace < session timeout"):
            limits._check_relationships()
    finally:
        limits.BROKER_DISCONNECT_GRACE_MS_DEFAULT = saved


@pytest.mark.parametrize("name, value, message", [
    ("PRODUCE_TIMEOUT_MS_DEFAULT", limits.MAX_PRODUCE_TIMEOUT_MS + 1, "produce timeout default"),
    ("ADMIN_TIMEOUT_MS_DEFAULT", 0, "admin timeout default"),
    ("ISR_CHECK_INTERVAL_MS_DEFAULT", limits.REPLICA_LAG_TIME_MAX_MS_DEFAULT, "ISR check < replica lag time"),
    ("DISK_EXECUTOR_THREADS", 0, "disk executor threads and queue"),
    ("LOOP_LAG_REPORT_MS", limits.LOOP_STALL_MS, "loop lag < stall"),
    ("CLASSIC_GROUP_MIN_SESSION_TIMEOUT_MS", limits.CLASSIC_GROUP_MAX_SESSION_TIMEOUT_MS + 1, "classic session range"),
])
def test_each_stated_relationship_is_checked(name, value, message):
    saved = getattr(limits, name)
    try:
        setattr(limits, name, value)
        with pytest.raises(AssertionError, match=message):
            limits._check_relationships()
    finally:
        setattr(limits, name, saved)


def test_limits_use_one_naming_style():
    """`MAX_*` / `MIN_*` prefix a bound (docs in limits.py); a trailing _MAX/_MIN is the other style."""
    names = [n for n in vars(limits) if n.isupper()]
    assert len(names) > 100
    assert [n for n in names if n.endswith(("_MAX", "_MIN"))] == []
