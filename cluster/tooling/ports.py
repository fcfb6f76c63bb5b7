"""Free TCP ports for brokers started by the supervisor, the benchmarks, the chaos runner and tests.

A port picked with bind(0) lies in the kernel's ephemeral range, where any outgoing connection on a
busy machine can take it between the pick and the broker's own bind (seen under parallel test load).
`free_ports` therefore picks at random in the 12,000 ports just *below* that range, and holds every
socket until all are picked, so one call never returns a port twice. The race that remains (another
process binding the port before the broker does) is unavoidable for ports handed to another process;
a broker whose port is taken exits with status 2 and says so.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
EPHEMERAL_LOW_DEFAULT = 32768   # Linux's default when the range cannot be read
PICK_SPAN_PORTS = 12_000        # how far below the ephemeral range ports are picked


def ephemeral_low() -> int:
    """The lowest port the kernel hands out for bind(0) and outgoing connections."""
    try:
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return EPHEMERAL_LOW_DEFAULT


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports on `host`, free right now and outside the ephemeral range."""
    low = ephemeral_low()
    rnd = random.Random()
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((host, rnd.randrange(max(1024, low - PICK_SPAN_PORTS), low)))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    """One port as `free_ports` picks them."""
    return free_ports(1, host)[0]
