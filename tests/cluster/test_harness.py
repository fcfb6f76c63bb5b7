"""The real-broker harness itself: faults by broker id, restart, and no leaked processes."""

from __future__ import annotations

import os
import tempfile

import pytest

from .harness import Cluster

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); the harness reaps its children, so check the state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_kill_pause_restart_and_clean_teardown():
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(tmp, brokers=3)
        try:
            pids = [cluster.pid(i) for i in cluster.broker_ids]
            assert all(pid and _alive(pid) for pid in pids)
            cluster.create_topic("h", partitions=1, replication_factor=3)
            leader = cluster.leader_of("h", 0)

            cluster.pause(leader)
            with open(f"/proc/{cluster.pid(leader)}/stat") as f:
                assert f.read().split(")")[-1].split()[0] == "T"  # stopped
            cluster.resume(leader)

            cluster.kill(leader)
            assert cluster.running() == [i for i in cluster.broker_ids if i != leader]
            new_leader = cluster.leader_of("h", 0, timeout_s=30, exclude=[leader])
            assert new_leader != leader

            cluster.restart(leader)  # same ports, same data dir; waits until ready again
            assert sorted(cluster.running()) == cluster.broker_ids
            info = cluster.wait_for_isr("h", 0, 3)  # the restarted broker caught up and rejoined
            assert sorted(info.isr) == [1, 2, 3]
            with cluster.producer(linger_ms=0) as producer:
                for i in range(5):
                    producer.send("h", b"%d" % i).result(30)
            assert sorted({r.value for r in cluster.read_all("h")}) == [b"%d" % i for i in range(5)]
            assert "SEMEL_BROKER_READY" in cluster.log_path(leader).read_text()
            pids = [cluster.pid(i) for i in cluster.broker_ids]
        finally:
            cluster.stop()
        assert not any(_alive(pid) for pid in pids if pid)


def test_brokers_die_with_a_killed_test_process(tmp_path):
    """kill -9 of the process running the harness leaves no broker behind (PDEATHSIG)."""
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from tests.cluster.harness import Cluster\n"
        "c = Cluster(sys.argv[2], brokers=1)\n"
        "print(c.pid(1), flush=True)\n"
        "import time; time.sleep(120)\n"
    )
    root = str(__import__("pathlib").Path(__file__).resolve().parents[2])
    proc = subprocess.Popen([sys.executable, "-c", script, root, str(tmp_path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip().isdigit(), line
        broker_pid = int(line)
        assert _alive(broker_pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while _alive(broker_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(broker_pid), "the broker outlived its supervisor"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
