"""Three brokers on three "hosts" (network namespaces, each with its own address), started from
the operator's config files in deploy/three-hosts/.

What loopback hides and this catches: a broker that binds one address (0.0.0.0) and must
advertise another; peers and clients that reach a broker only through the address it
advertises; voter lists whose Raft and gRPC addresses must match on every host; every host
using the *same* ports (9092, 19092) because each has its own network stack.

The only edits to the operator's files: the host names become the namespaces' addresses (no
DNS here), data_dir a tmp directory and raft_secret_file a tmp file (mode 0600) shared by the
three hosts, as an operator would install /etc/semel/raft-secret on each: the voters bind
non-loopback Raft addresses, so they refuse to start without it. Then: create a topic RF 3, produce with acks=all,
SIGKILL the broker of the host that leads partition 0, produce again, and read everything back
from the two survivors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from semel.client import Admin, Consumer, Producer
from semel.cluster.broker import health_probe
from semel.cluster.broker.process import DIE_WITH_PARENT_ENV, READY_LINE, BrokerConfig
from semel.cluster.tooling.local_cluster import ensure_raft_secret_file
from tests.cluster.harness import create_topic_when_brokers_alive
from tests.deploy.netns import HostNetwork, NamespacesUnavailable

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "deploy" / "three-hosts"
HOSTS = 3
TOPIC = "multi-host"
PARTITIONS = 3
RECORDS_BEFORE_KILL = 300
RECORDS_AFTER_KILL = 300
READY_TIMEOUT_S = 120.0  # three cold brokers on a shared 2-core machine
STOP_TIMEOUT_S = 15.0

pytestmark = pytest.mark.slow


def host_name(host: int) -> str:
    return f"semel-{host}.example.internal"


def operator_config(host: int, net: HostNetwork, data_dir: Path) -> dict[str, object]:
    """deploy/three-hosts/broker-N.json with the host names resolved to the namespaces' addresses."""
    text = (TEMPLATES / f"broker-{host}.json").read_text()
    for other in range(1, HOSTS + 1):
        text = text.replace(host_name(other), net.address(other))
    config = json.loads(text)
    config["data_dir"] = str(data_dir)
    return config


class HostBroker:
    """One broker process inside one host's namespace; stdout is watched for the ready line."""

    def __init__(self, host: int, net: HostNetwork, config_path: Path, log_path: Path) -> None:
        self.host = host
        self.log_path = log_path
        self.ready = threading.Event()
        env = {**os.environ, DIE_WITH_PARENT_ENV: "1"}
        argv = net.command(host, [sys.executable, "-m", "semel.cluster.broker", "--config", str(config_path)])
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        self._reader = threading.Thread(target=self._watch, name=f"host-{host}-stdout", daemon=True)
        self._reader.start()

    def _watch(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(READY_LINE):
                self.ready.set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"


class Deployment:
    """The hosts of one test, the broker each runs and its config file; stops them all at the end."""

    def __init__(self, net: HostNetwork, root: Path) -> None:
        self.net = net
        self.root = root
        self.brokers: dict[int, HostBroker] = {}
        self.raft_secret_file = ensure_raft_secret_file(root)

    def config_path(self, host: int) -> Path:
        return self.root / f"host-{host}" / "broker.json"

    def write_config(self, host: int, config: dict[str, object]) -> None:
        path = self.config_path(host)
        path.parent.mkdir(parents=True, exist_ok=True)
        assert config["raft_secret_file"] == "/etc/semel/raft-secret"  # the operator's file names one
        path.write_text(json.dumps({**config, "raft_secret_file": str(self.raft_secret_file)}, indent=2))

    def start(self, host: int) -> HostBroker:
        assert host not in self.brokers or self.brokers[host].proc.poll() is not None, f"host {host} is running"
        self.brokers[host] = HostBroker(host, self.net, self.config_path(host), self.root / f"host-{host}" / "broker.log")
        return self.brokers[host]

    def wait_ready(self, hosts: list[int], timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        for host in hosts:
            broker = self.brokers[host]
            if not broker.ready.wait(max(0.0, deadline - time.monotonic())):
                pytest.fail(f"broker on host {host} not ready within {timeout_s} s "
                            f"(exit {broker.proc.poll()})\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- host {h} ---\n{b.log_tail()}" for h, b in self.brokers.items())

    def stop_all(self) -> None:
        for broker in self.brokers.values():
            broker.stop()


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    net = HostNetwork(HOSTS)
    try:
        net.__enter__()
    except NamespacesUnavailable as exc:
        pytest.skip(f"multi-host test needs Linux network namespaces: {exc}")
    deployment = Deployment(net, tmp_path)
    try:
        yield deployment
    finally:
        deployment.stop_all()  # processes first: a namespace with a process in it outlives `ip netns del`
        net.remove()
    assert net.leftovers() == [], "the test's namespaces, veths, bridge or hosts files were left behind"


def produce(producer: Producer, start: int, count: int) -> list[tuple[int, int]]:
    futures = [producer.send(TOPIC, value=f"record-{i}", key=f"key-{i}") for i in range(start, start + count)]
    producer.flush(timeout_s=120)
    return [(m.partition, m.offset) for m in (f.result(timeout=0) for f in futures)]


def read_everything(bootstrap: str, expected: int) -> list[tuple[int, int, bytes]]:
    deadline = time.monotonic() + 120
    out: list[tuple[int, int, bytes]] = []
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([(TOPIC, p) for p in range(PARTITIONS)])
        while len(out) < expected and time.monotonic() < deadline:
            out.extend((r.partition, r.offset, r.value) for r in consumer.poll(1000))
    return out


def test_three_hosts_produce_kill_a_host_consume_from_survivors(deployment: Deployment) -> None:
    net, brokers = deployment.net, deployment.brokers
    for host in range(1, HOSTS + 1):
        deployment.write_config(host, operator_config(host, net, deployment.root / f"host-{host}" / "data"))
        deployment.start(host)
    deployment.wait_ready(list(range(1, HOSTS + 1)))
    addresses = {host: f"{net.address(host)}:9092" for host in brokers}
    for address in addresses.values():  # the container HEALTHCHECK's probe against the real thing
        assert health_probe.probe(address) == (True, f"{address}: SERVING")
    bootstrap = ",".join(addresses.values())
    with Admin(bootstrap) as admin:
        create_topic_when_brokers_alive(admin, TOPIC, PARTITIONS, 3, None, timeout_s=60)
        view = admin.metadata()
        registered = dict(view.brokers)  # broker id -> "host:port" clients are told
    assert registered == addresses  # advertised, not the 0.0.0.0 the brokers bind

    with Producer(bootstrap, acks="all", enable_idempotence=True, delivery_timeout_ms=120_000) as producer:
        acked = produce(producer, 0, RECORDS_BEFORE_KILL)
        with Admin(bootstrap) as admin:
            victim = admin.metadata([TOPIC]).partition(TOPIC, 0).leader_id
        assert victim in brokers
        brokers[victim].proc.kill()  # SIGKILL: the host's broker is gone, its network too
        brokers[victim].proc.wait(STOP_TIMEOUT_S)
        killed_at = time.monotonic()
        acked += produce(producer, RECORDS_BEFORE_KILL, RECORDS_AFTER_KILL)
        print(f"host {victim} killed; {RECORDS_AFTER_KILL} more records acked by the survivors "
              f"{time.monotonic() - killed_at:.2f} s later")

    survivors = ",".join(a for h, a in addresses.items() if h != victim)
    with Admin(survivors) as admin:
        view = admin.metadata([TOPIC])
        leaders = {view.partition(TOPIC, p).leader_id for p in range(PARTITIONS)}
    assert victim not in leaders and leaders <= set(brokers)
    records = read_everything(survivors, len(acked))
    assert sorted((p, o) for p, o, _ in records) == sorted(acked), deployment.logs()
    values = sorted(int(v.decode().removeprefix("record-")) for _, _, v in records)
    assert values == list(range(RECORDS_BEFORE_KILL + RECORDS_AFTER_KILL))


def test_operator_configs_name_the_hosts_the_test_replaces() -> None:
    """The substitution above must touch every address in the files (else a broker would try
    to reach semel-N.example.internal and the test would prove nothing about the files)."""
    for host in range(1, HOSTS + 1):
        config = BrokerConfig.from_args(["--config", str(TEMPLATES / f"broker-{host}.json")])
        assert config.listen_host == "0.0.0.0"
        assert config.advertised_host == host_name(host)
        assert config.raft_address == f"{host_name(host)}:19092"
        assert [v.split("@")[1].split(":")[0] for v in config.voters] == [host_name(h) for h in range(1, 4)]


# pysyncobj's default DNS cache kept the old address for 600 s: the voter never rejoined within
# 90 s before quorum.py set dns_cache_s. Now it takes 39-72 s (four runs) on this setup, and
# 6 s when the peers' neighbour (ARP) entries are flushed along with the move: a connect to the
# vanished address hangs (the stale neighbour entry sends the SYN to a host that silently drops
# it) until the kernel gives up, and pysyncobj has no connect timeout of its own.
REJOIN_TIMEOUT_S = 150.0


def test_a_voter_that_comes_back_at_a_new_address_rejoins(deployment: Deployment) -> None:
    """A Kubernetes pod rescheduled, or a VM re-created: same host name, new address.

    The voters are named by host name here (each host's /etc/hosts resolves them), as in the
    operator's files and the Kubernetes manifests. Host 1 has the lowest Raft address, so the
    other voters dial it (pysyncobj: the higher address connects): they must resolve its name
    again, not keep the address they resolved at start."""
    net = deployment.net
    names = {host_name(h): net.address(h) for h in range(1, HOSTS + 1)}
    net.set_hosts(names)

    def config(host: int) -> dict[str, object]:
        text = (TEMPLATES / f"broker-{host}.json").read_text()
        values = json.loads(text)
        values["data_dir"] = str(deployment.root / f"host-{host}" / "data")
        values["advertised_host"] = net.address(host)  # the test's own client resolves no host names
        return values

    for host in range(1, HOSTS + 1):
        deployment.write_config(host, config(host))
        deployment.start(host)
    deployment.wait_ready(list(range(1, HOSTS + 1)))
    moved = 1
    deployment.brokers[moved].proc.kill()
    deployment.brokers[moved].proc.wait(STOP_TIMEOUT_S)
    net.readdress(moved, 11)
    net.set_hosts({**names, host_name(moved): net.address(moved)})
    deployment.write_config(moved, config(moved))
    restarted_at = time.monotonic()
    deployment.start(moved)
    deployment.wait_ready([moved], REJOIN_TIMEOUT_S)
    print(f"host {moved} back at {net.address(moved)}: registered through the quorum "
          f"{time.monotonic() - restarted_at:.2f} s after its start")
    address = f"{net.address(moved)}:9092"
    assert health_probe.probe(address) == (True, f"{address}: SERVING")
    with Admin(address) as admin:
        assert admin.metadata().brokers[moved] == address
