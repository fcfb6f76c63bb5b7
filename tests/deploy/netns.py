"""Linux network namespaces as stand-in hosts: one namespace per host, joined by a bridge.

    with HostNetwork(hosts=3) as net:      # raises NamespacesUnavailable where not permitted
        net.address(1)                     # "10.250.S.1": host 1's own address
        net.command(1, ["python", ...])    # argv that runs inside host 1's namespace
        net.set_hosts({"semel-1.example.internal": net.address(1), ...})   # every host's /etc/hosts
        net.readdress(1, 11)               # host 1 moves to 10.250.S.11 (a rescheduled pod)

Each host gets a veth pair: one end inside its namespace (address 10.250.S.N/24, plus `lo`),
the other on a bridge in the test's own namespace, which also holds 10.250.S.254 so the test
process reaches every host directly. No namespace has a default route: nothing can leave the
machine. Name resolution inside the hosts: `ip netns exec` bind-mounts /etc/netns/NAME/hosts
over /etc/hosts, so `set_hosts` gives every host the same hosts file (rewritten in place, so
running processes see changes: glibc reads /etc/hosts on every lookup); the test's own
namespace resolves nothing of it. Everything is removed on exit, also when the test failed or setup stopped half way
(teardown deletes whatever of its own names exist; a name is unique per test process).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

SUBNET_PREFIX = "10.250"
ROOT_HOST_OCTET = 254
IP_TIMEOUT_S = 10.0
NETNS_ETC = Path("/etc/netns")  # where `ip netns exec` finds a namespace's own /etc files


class NamespacesUnavailable(Exception):
    """This machine does not let the test create network namespaces (not root, no `ip`, a sandbox)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


class HostNetwork:
    def __init__(self, hosts: int, tag: int | None = None) -> None:
        if not 1 <= hosts <= 200:
            raise ValueError("hosts must be in 1..200")
        self.hosts = hosts
        self.tag = os.getpid() % 100_000 if tag is None else tag
        self.subnet_octet = self.tag % 250  # a concurrent run of another test process gets another subnet
        self.bridge = f"smb{self.tag}"
        self._octets = {host: host for host in range(1, hosts + 1)}

    # --- names and addresses ---------------------------------------------------------
    def namespace(self, host: int) -> str:
        return f"semel-t{self.tag}-{host}"

    def _veth(self, host: int) -> tuple[str, str]:
        return f"smv{self.tag}h{host}", f"smv{self.tag}n{host}"

    def address(self, host: int) -> str:
        return self._ip_of(self._octets[host])

    def _ip_of(self, octet: int) -> str:
        return f"{SUBNET_PREFIX}.{self.subnet_octet}.{octet}"

    @property
    def root_address(self) -> str:
        return self._ip_of(ROOT_HOST_OCTET)

    def _hosts_file(self, host: int) -> Path:
        return NETNS_ETC / self.namespace(host) / "hosts"

    def command(self, host: int, argv: Sequence[str]) -> list[str]:
        """`argv` run inside `host`'s namespace (ip netns exec execs it: the pid is argv's own)."""
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    def set_hosts(self, names: Mapping[str, str]) -> None:
        """Every host's /etc/hosts: localhost plus `names` (name -> address). Call before starting
        processes (the bind mount happens at `ip netns exec`); later calls rewrite in place."""
        lines = ["127.0.0.1 localhost", *(f"{address} {name}" for name, address in names.items())]
        for host in range(1, self.hosts + 1):
            path = self._hosts_file(host)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as f:  # same inode: the bind mounts of running processes see it
                f.write("\n".join(lines) + "\n")

    def readdress(self, host: int, octet: int) -> None:
        """Move `host` to 10.250.S.`octet` (its old address is gone)."""
        if not 1 <= octet <= 253 or octet in self._octets.values():
            raise ValueError(f"octet {octet} is not free")
        ns, inside = self.namespace(host), self._veth(host)[1]
        # Delete first: deleting a primary address also deletes the secondaries of its subnet.
        _ip("-n", ns, "addr", "del", f"{self.address(host)}/24", "dev", inside)
        _ip("-n", ns, "addr", "add", f"{self._ip_of(octet)}/24", "dev", inside)
        self._octets[host] = octet

    # --- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> HostNetwork:
        self._check_permitted()
        try:
            self._create()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _check_permitted(self) -> None:
        if shutil.which("ip") is None:
            raise NamespacesUnavailable("the `ip` command (iproute2) is not installed")
        if os.geteuid() != 0:
            raise NamespacesUnavailable("creating network namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)")
        probe = f"semel-t{self.tag}-probe"
        proc = _ip("netns", "add", probe, check=False)
        if proc.returncode != 0:
            raise NamespacesUnavailable(f"`ip netns add` is not permitted here: {proc.stderr.strip()}")
        _ip("netns", "del", probe, check=False)

    def _create(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.root_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for host in range(1, self.hosts + 1):
            ns = self.namespace(host)
            outside, inside = self._veth(host)
            _ip("netns", "add", ns)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", outside, "master", self.bridge)
            _ip("link", "set", outside, "up")
            _ip("link", "set", inside, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", inside)
            _ip("-n", ns, "link", "set", inside, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def remove(self) -> None:
        """Delete every namespace, veth and the bridge of this network that exists (idempotent).

        Processes still running inside a namespace keep it alive after `ip netns del`: the
        caller stops them first."""
        for host in range(1, self.hosts + 1):
            _ip("netns", "del", self.namespace(host), check=False)  # takes the inside veth end along
            _ip("link", "del", self._veth(host)[0], check=False)  # and so the pair, if it was never moved
            shutil.rmtree(self._hosts_file(host).parent, ignore_errors=True)
        _ip("link", "del", self.bridge, check=False)
        try:
            NETNS_ETC.rmdir()  # only if empty: set_hosts may have created it
        except OSError:
            pass

    def leftovers(self) -> list[str]:
        """Names of this network that still exist (for the test's own cleanup check)."""
        namespaces = _ip("netns", "list", check=False).stdout
        links = _ip("-o", "link", "show", check=False).stdout
        found = [self.namespace(h) for h in range(1, self.hosts + 1) if self.namespace(h) in namespaces.split()]
        found += [name for name in (self.bridge, *(self._veth(h)[0] for h in range(1, self.hosts + 1)))
                  if f" {name}:" in links or f" {name}@" in links]
        found += [str(self._hosts_file(h).parent) for h in range(1, self.hosts + 1) if self._hosts_file(h).parent.exists()]
        return found
