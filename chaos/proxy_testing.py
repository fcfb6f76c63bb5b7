"""Small TCP peers for exercising the fault proxy (used by tests/chaos/test_proxy*.py).

`EchoServer` echoes every byte back, except that a connection whose data contains
`CLOSE_COMMAND` is closed by the server (to observe how closes travel through a proxy).
Blocking sockets and one thread per connection: simple, and independent of the proxy's
event loop.
"""

from __future__ import annotations

import socket
import threading
import time

CLOSE_COMMAND = b"CLOSE"


class EchoServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(64)
        self.host, self.port = self._listener.getsockname()[:2]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, name="echo-accept", daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EchoServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            for conn in list(self._conns):
                conn.close()
        self._thread.join(5)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="echo-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                if CLOSE_COMMAND in data:
                    return
                conn.sendall(data)
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def dial(address: str, timeout_s: float = 5.0) -> socket.socket:
    sock = socket.create_connection(split_address(address), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, n_bytes: int) -> bytes:
    chunks = []
    remaining = n_bytes
    while remaining > 0:
        data = sock.recv(min(remaining, 65536))
        if not data:
            break
        chunks.append(data)
        remaining -= len(data)
    return b"".join(chunks)


def round_trip_s(sock: socket.socket, payload: bytes = b"ping") -> float:
    """Seconds for `payload` to come back whole through an echo peer."""
    start = time.monotonic()
    sock.sendall(payload)
    echoed = recv_exactly(sock, len(payload))
    if echoed != payload:
        raise AssertionError(f"echo returned {echoed!r}, expected {payload!r}")
    return time.monotonic() - start
