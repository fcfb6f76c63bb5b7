"""The cluster under test: real broker processes whose every link passes through a fault proxy.

Theory of operation
-------------------
Nodes are numbered: 0 stands for "the clients" (every workload process and the final
readers), 1..N are the brokers. Every TCP connection crosses exactly one proxy of a
Toxiproxy-v2 server (ours, `python -m semel.chaos.proxy`, or a real one at `$TOXIPROXY_URL`):

  client-J         clients   -> broker J's gRPC   (advertised to clients: `--advertised`)
  rpc-I-J          broker I  -> broker J's gRPC   (replication, controller heartbeats, ListOffsets,
                                                   later markers/coordinator calls: `--dial`)
  raft-I-J         broker I  -> broker J's Raft   (`--raft-dial`; pysyncobj opens one connection per
                                                   pair, from the greater address, so only the
                                                   (I, J) with raft_I > raft_J exist)

A proxy carries data both ways: its `upstream` stream is dialler -> dialled, `downstream` the
reverse. `flow_streams(links, src, dst)` (pure) says which (proxy, stream) pairs carry the
data flowing from node `src` to node `dst`; the nemesis cuts or slows flows, so "isolate
broker 2", "cut 1 -> 3 one way" or "slow the clients' links" are sets of flows.

Identities stay real: brokers listen and register Raft on their real ports, advertise the
client proxy, and dial peers through their own per-link proxies. The control plane (this
supervisor's own Admin calls, readiness) talks to the real ports, outside the faults.

The proxy API is called with plain HTTP requests with timeouts (toxiproxy-python has none and
keeps its server address in class attributes).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import requests
from semel.chaos.proxy import ProxyServerProcess, parse_url
from semel.cluster.tooling.local_cluster import (
    READY_TIMEOUT_S,
    BrokerProcess,
    BrokerSpec,
    LocalCluster,
    ensure_raft_secret_file,
)
from semel.cluster.tooling.ports import free_ports
from semel import clock as semel_clock
from semel.storage import power_cut as power_cut_layer

CLIENTS = 0  # the node number of "every client"
API_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class Link:
    """One proxy: node `src` dials node `dst` (`kind` "client", "rpc" or "raft") at `upstream`."""

    name: str
    kind: str
    src: int
    dst: int
    upstream: str


BALLAST = "disk-full-ballast"  # the nemesis's filler file in a broker's log directory


def plan_links(specs: Sequence[BrokerSpec]) -> list[Link]:
    """Every proxy a cluster of `specs` needs (pure; see the module docstring)."""
    links: list[Link] = []
    for dst in specs:
        links.append(Link(f"client-{dst.broker_id}", "client", CLIENTS, dst.broker_id, dst.address))
    for src in specs:
        for dst in specs:
            if src.broker_id == dst.broker_id:
                continue
            links.append(Link(f"rpc-{src.broker_id}-{dst.broker_id}", "rpc", src.broker_id, dst.broker_id,
                              dst.address))
            if src.raft_address > dst.raft_address:  # pysyncobj: the greater address connects
                links.append(Link(f"raft-{src.broker_id}-{dst.broker_id}", "raft", src.broker_id, dst.broker_id,
                                  dst.raft_address))
    return links


def flow_streams(links: Iterable[Link], src: int, dst: int, kinds: Iterable[str] = ("client", "rpc", "raft"),
                 ) -> list[tuple[str, str]]:
    """(proxy name, stream) pairs carrying data from node `src` to node `dst`."""
    wanted = set(kinds)
    out = []
    for link in links:
        if link.kind not in wanted:
            continue
        if (link.src, link.dst) == (src, dst):
            out.append((link.name, "upstream"))
        elif (link.src, link.dst) == (dst, src):
            out.append((link.name, "downstream"))
    return out


class ToxiproxyApi:
    """The few Toxiproxy v2 calls the nemesis needs, with timeouts."""

    def __init__(self, url: str) -> None:
        host, port = parse_url(url)
        self.base = f"http://{host}:{port}"
        self.session = requests.Session()

    def _call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201, 204)) -> Any:
        resp = self.session.request(method, self.base + path, json=body, timeout=API_TIMEOUT_S)
        if resp.status_code not in ok:
            raise RuntimeError(f"toxiproxy {method} {path}: {resp.status_code} {resp.text.strip()}")
        return resp.json() if resp.content else None

    def create_proxy(self, name: str, upstream: str, listen: str = "127.0.0.1:0") -> str:
        self._call("DELETE", f"/proxies/{name}", ok=(204, 404))
        proxy = self._call("POST", "/proxies", {"name": name, "upstream": upstream, "listen": listen,
                                                 "enabled": True})
        return str(proxy["listen"])

    def delete_proxy(self, name: str) -> None:
        self._call("DELETE", f"/proxies/{name}", ok=(204, 404))

    def add_toxic(self, proxy: str, name: str, type: str, stream: str, attributes: dict[str, int],
                  toxicity: float = 1.0) -> None:
        self._call("POST", f"/proxies/{proxy}/toxics",
                   {"name": name, "type": type, "stream": stream, "toxicity": toxicity, "attributes": attributes})

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{name}", ok=(204, 404))

    def reset(self) -> None:
        """Every proxy enabled, every toxic removed."""
        self._call("POST", "/reset")

    def toxics(self) -> dict[str, list[dict[str, Any]]]:
        proxies = self._call("GET", "/proxies")
        return {name: list(p.get("toxics") or []) for name, p in proxies.items()}


class ChaosCluster:
    """N brokers behind per-link proxies. Start/stop from one long-lived thread (PDEATHSIG)."""

    def __init__(self, data_dir: str | Path, brokers: int = 3, extra_args: Sequence[str] = (),
                 toxiproxy_url: str | None = None, proxy_seed: int = 0, host: str = "127.0.0.1",
                 power_cut: bool = False, log_dir_tmpfs_bytes: int | None = None,
                 clock_offsets: bool = False) -> None:
        """`power_cut`: brokers run the test-only power-cut layer, so `power_cut()` can cut them.
        `log_dir_tmpfs_bytes`: each broker's log directory on its own tmpfs of this size (the
        disk-full nemesis fills it). `clock_offsets`: brokers run with the test-only wall-clock
        offset (`semel.clock`), so `set_clock_offset()` can step their wall clocks."""
        self.dir = Path(data_dir)
        test_env = {**({power_cut_layer.ENV: "1"} if power_cut else {}),
                    **({semel_clock.TEST_OFFSET_ENV: "1"} if clock_offsets else {})}
        self.env = dict(os.environ, **test_env) if test_env else None
        self.clock_offsets = clock_offsets
        self.log_dir_tmpfs_bytes = log_dir_tmpfs_bytes
        self._mounted: list[Path] = []
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.extra_args = tuple(extra_args)
        self.toxiproxy_url = toxiproxy_url if toxiproxy_url is not None else os.environ.get("TOXIPROXY_URL") or None
        self.proxy_seed = proxy_seed
        ports = free_ports(2 * brokers, host)
        self.specs = [BrokerSpec(i + 1, host, ports[i], ports[brokers + i], self.dir / f"broker-{i + 1}")
                      for i in range(brokers)]
        self.links = plan_links(self.specs)
        self.listen: dict[str, str] = {}  # proxy name -> its listen address
        self._proxy_server: ProxyServerProcess | None = None
        self.api: ToxiproxyApi | None = None
        self.cluster: LocalCluster | None = None
        self.unexpected_exits: list[dict[str, Any]] = []  # brokers that died without the nemesis

    def _unexpected(self, broker: BrokerProcess, code: int) -> None:
        self.unexpected_exits.append({"broker_id": broker.spec.broker_id, "exit_code": code,
                                      "log_tail": broker.tail()[-20:]})

    # --- lifecycle --------------------------------------------------------------------
    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        try:
            self._mount_log_dirs()
            self._start_proxies()
            self.cluster = LocalCluster(self.specs, self.dir, self.extra_args, on_unexpected_exit=self._unexpected)
            for spec in self.specs:
                old = self.cluster.brokers[spec.broker_id]
                self.cluster.brokers[spec.broker_id] = BrokerProcess(
                    spec, self.broker_argv(spec), old.log_path, on_exit=old.on_exit, env=self.env)
            self.cluster.start(timeout_s=timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start_proxies(self) -> None:
        if self.toxiproxy_url is None:
            self._proxy_server = ProxyServerProcess(host=self.host, seed=self.proxy_seed).start()
            url = self._proxy_server.url
        else:
            url = self.toxiproxy_url
        self.api = ToxiproxyApi(url)
        for link in self.links:
            self.listen[link.name] = self.api.create_proxy(link.name, link.upstream, f"{self.host}:0")

    def broker_argv(self, spec: BrokerSpec) -> list[str]:
        voters = ",".join(f"{v.broker_id}@{v.raft_address}@{v.address}" for v in self.specs)
        dial = ",".join(f"{l.dst}={self.listen[l.name]}" for l in self.links if l.kind == "rpc" and l.src == spec.broker_id)
        raft = ",".join(f"{l.dst}={self.listen[l.name]}" for l in self.links
                        if l.kind == "raft" and l.src == spec.broker_id)
        argv = [sys.executable, "-m", "semel.cluster.broker", "--broker-id", str(spec.broker_id),
                "--listen", spec.address, "--advertised", self.listen[f"client-{spec.broker_id}"],
                "--data-dir", str(spec.data_dir), "--raft", spec.raft_address, "--voters", voters,
                "--raft-secret-file", str(ensure_raft_secret_file(self.dir))]
        if dial:
            argv += ["--dial", dial]
        if raft:
            argv += ["--raft-dial", raft]
        return argv + list(self.extra_args)

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop(grace_s=5)
        if self.api is not None and self._proxy_server is None:  # a shared real Toxiproxy: tidy up
            for link in self.links:
                try:
                    self.api.delete_proxy(link.name)
                except Exception:
                    pass
        if self._proxy_server is not None:
            self._proxy_server.stop()
            self._proxy_server = None
        while self._mounted:
            subprocess.run(["umount", "-l", str(self._mounted.pop())], check=False)

    # --- log directories (the disk-full nemesis) ----------------------------------------
    def _mount_log_dirs(self) -> None:
        if self.log_dir_tmpfs_bytes is None:
            return
        for spec in self.specs:
            logs = spec.data_dir / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.log_dir_tmpfs_bytes}", "tmpfs", str(logs)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"the disk-full nemesis mounts a tmpfs per broker (needs root): {r.stderr.strip()}")
            self._mounted.append(logs)

    def fill_log_dir(self, broker_id: int) -> str:
        """Fill the broker's log directory with a ballast file: its next append hits ENOSPC."""
        logs = self.specs[broker_id - 1].data_dir / "logs"
        if logs not in self._mounted:
            raise RuntimeError("disk-full needs the log directories on tmpfs (log_dir_tmpfs_bytes)")
        written = 0
        chunk = b"\0" * (1 << 20)
        with open(logs / BALLAST, "ab") as f:
            try:
                while True:
                    written += f.write(chunk)
                    f.flush()
            except OSError:
                pass  # full
        return f"ballast {written} bytes"

    def free_log_dir(self, broker_id: int) -> None:
        (self.specs[broker_id - 1].data_dir / "logs" / BALLAST).unlink(missing_ok=True)

    def __enter__(self) -> ChaosCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- addresses --------------------------------------------------------------------
    @property
    def broker_ids(self) -> list[int]:
        return [s.broker_id for s in self.specs]

    @property
    def bootstrap(self) -> str:
        """What clients use: the client proxies."""
        return ",".join(self.listen[f"client-{s.broker_id}"] for s in self.specs)

    @property
    def direct_bootstrap(self) -> str:
        """The real ports (the supervisor's control plane, outside the faults)."""
        return ",".join(s.address for s in self.specs)

    # --- processes ---------------------------------------------------------------------
    def _broker(self, broker_id: int) -> BrokerProcess:
        assert self.cluster is not None
        return self.cluster.brokers[broker_id]

    def alive(self, broker_id: int) -> bool:
        return self._broker(broker_id).alive()

    def kill(self, broker_id: int) -> None:
        b = self._broker(broker_id)
        if b.paused:
            b.signal(signal.SIGCONT)
        b.kill()

    def terminate(self, broker_id: int) -> int | None:
        return self._broker(broker_id).stop(5.0)

    def power_cut(self, broker_ids: Sequence[int], seed: int) -> dict[int, dict[str, int]]:
        """The brokers lose power together (torn tails included); they stay down (`start_broker`)."""
        assert self.cluster is not None and self.env is not None and self.env.get(power_cut_layer.ENV) == "1", \
            "ChaosCluster(power_cut=True) only"
        return self.cluster.power_cut(broker_ids, seed, torn=True, restart=False)

    def start_broker(self, broker_id: int) -> None:
        """Start a stopped broker; does not wait (see `wait_ready`)."""
        b = self._broker(broker_id)
        if not b.alive():
            b.start()

    def is_ready(self, broker_id: int) -> bool:
        """Running and printed its ready line since it was (re)started."""
        b = self._broker(broker_id)
        return b.alive() and b.ready.is_set()

    def wait_ready(self, broker_ids: Sequence[int] | None = None, timeout_s: float = READY_TIMEOUT_S) -> None:
        assert self.cluster is not None
        self.cluster.wait_ready(timeout_s, broker_ids)

    def pause(self, broker_id: int) -> None:
        assert self.cluster is not None
        if self.alive(broker_id):
            self.cluster.pause(broker_id)

    def resume(self, broker_id: int) -> None:
        assert self.cluster is not None
        self.cluster.resume(broker_id)

    def paused(self, broker_id: int) -> bool:
        return self._broker(broker_id).paused

    def log_path(self, broker_id: int) -> Path:
        return self._broker(broker_id).log_path

    def logs(self, lines: int = 40) -> str:
        out = []
        for bid in self.broker_ids:
            path = self.log_path(bid)
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else ["(no log)"]
            out.append(f"----- broker {bid} ({path}) -----\n" + "\n".join(text))
        return "\n".join(out)

    def create_topic(self, name: str, partitions: int = 1, replication_factor: int = 3,
                     configs: dict[str, str] | None = None, timeout_s: float = 30.0) -> None:
        """Create a topic through the real ports; retry while a broker is briefly fenced (a loaded
        machine delays heartbeats), then wait until every partition has a leader."""
        from semel.client import Admin
        from semel.client.errors import (
            InvalidReplicationFactorError,
            TopicAlreadyExistsError,
        )

        deadline = time.monotonic() + timeout_s
        with Admin(self.direct_bootstrap) as admin:
            while True:
                try:
                    admin.create_topic(name, partitions, replication_factor, configs)
                    break
                except TopicAlreadyExistsError:
                    break
                except InvalidReplicationFactorError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.1)

            def led() -> bool:
                view = admin.metadata([name])
                parts = [view.partition(name, p) for p in range(partitions)]
                return all(p is not None and p.leader_id >= 0 for p in parts)

            if not wait_until(led, max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"topic {name}: not every partition has a leader after {timeout_s} s")

    # --- network faults ------------------------------------------------------------------
    def flows(self, src: int, dst: int, kinds: Iterable[str] = ("client", "rpc", "raft")) -> list[tuple[str, str]]:
        return flow_streams(self.links, src, dst, kinds)

    def heal_network(self) -> None:
        assert self.api is not None
        self.api.reset()

    def set_clock_offset(self, broker_id: int, offset_ms: int) -> None:
        """Step a broker's wall clock to `offset_ms` from the host's (it polls the file, dead or alive)."""
        assert self.clock_offsets, "ChaosCluster(clock_offsets=True) only"
        spec = next(s for s in self.specs if s.broker_id == broker_id)
        spec.data_dir.mkdir(parents=True, exist_ok=True)
        semel_clock.write_test_offset(spec.data_dir / semel_clock.TEST_OFFSET_FILE, offset_ms)


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
