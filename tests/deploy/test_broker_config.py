"""The broker entry points the deployment files rely on: ids from the hostname, the health probe."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from semel.cluster.broker import health_probe
from semel.cluster.broker import process as broker_process
from semel.cluster.broker.process import BrokerConfig, broker_id_from_hostname

REPO = Path(__file__).resolve().parents[2]
THREE_HOSTS = sorted((REPO / "deploy" / "three-hosts").glob("broker-*.json"))


@pytest.mark.parametrize(("hostname", "broker_id"), [("semel-1", 1), ("semel-12", 12),
                                                     ("semel-3.semel.semel.svc.cluster.local", 3),
                                                     ("my-semel-broker-0", 0)])
def test_broker_id_from_hostname(hostname: str, broker_id: int) -> None:
    assert broker_id_from_hostname(hostname) == broker_id


@pytest.mark.parametrize("hostname", ["semel", "semel-", "semel-x", "host.semel-1", "semel-1a"])
def test_hostname_without_an_ordinal_is_refused(hostname: str) -> None:
    with pytest.raises(ValueError, match="does not end in -N"):
        broker_id_from_hostname(hostname)


def test_from_args_takes_the_id_from_the_hostname(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(broker_process.socket, "gethostname", lambda: "semel-2")
    config = BrokerConfig.from_args(["--config", str(THREE_HOSTS[1]), "--broker-id-from-hostname",
                                     "--data-dir", str(tmp_path)])
    assert config.broker_id == 2 and config.raft_address == "semel-2.example.internal:19092"
    monkeypatch.setattr(broker_process.socket, "gethostname", lambda: "semel-3")
    with pytest.raises(SystemExit):  # id 3 does not own broker-2.json's Raft address
        BrokerConfig.from_args(["--config", str(THREE_HOSTS[1]), "--broker-id-from-hostname"])
    with pytest.raises(SystemExit):
        BrokerConfig.from_args(["--broker-id", "1", "--broker-id-from-hostname"])


def test_three_hosts_files_are_valid_broker_configs() -> None:
    assert [p.name for p in THREE_HOSTS] == ["broker-1.json", "broker-2.json", "broker-3.json"]
    for i, path in enumerate(THREE_HOSTS, start=1):
        config = BrokerConfig.from_args(["--config", str(path)])
        assert config.broker_id == i and config.validate() is None
        assert config.voters == BrokerConfig.from_args(["--config", str(THREE_HOSTS[0])]).voters
        assert json.loads(path.read_text())["broker_id"] == i


class _HealthServer:
    def __init__(self) -> None:
        self.servicer = health.HealthServicer()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def set(self, status: int) -> None:
        self.servicer.set("", status)


@pytest.fixture
def health_server():
    server = _HealthServer()
    yield server
    server.server.stop(None)


def test_probe_follows_the_serving_status(health_server: _HealthServer, capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{health_server.port}"
    health_server.set(health_pb2.HealthCheckResponse.NOT_SERVING)
    assert health_probe.main(["--address", address]) == health_probe.EXIT_NOT_SERVING
    assert capsys.readouterr().out.strip() == f"{address}: NOT_SERVING"
    health_server.set(health_pb2.HealthCheckResponse.SERVING)
    assert health_probe.main(["--address", address]) == health_probe.EXIT_SERVING
    assert capsys.readouterr().out.strip() == f"{address}: SERVING"


def test_probe_of_a_closed_port_fails_within_its_timeout(health_server: _HealthServer) -> None:
    address = f"127.0.0.1:{health_server.port}"
    health_server.server.stop(None).wait()
    proc = subprocess.run([sys.executable, "-m", "semel.cluster.broker.health_probe", "--address", address,
                           "--timeout-ms", "1000"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"{address}: no health answer: ")
