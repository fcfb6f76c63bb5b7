"""Real data through the fault proxy: every toxic, live toxic changes, enable/disable.

Each test compares a measurement with and without the fault (or with the fault removed),
so a proxy that ignored the toxic would fail. Timing bounds are loose on the slow side
(shared 2-core machines) and tight on the side the toxic guarantees.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests
from semel.chaos.proxy import ProxyServerThread, connect
from semel.chaos.proxy_testing import (
    CLOSE_COMMAND,
    EchoServer,
    dial,
    recv_exactly,
    round_trip_s,
)
from semel.cluster.tooling.ports import free_port

SEED = 424242
SLACK_S = 0.25    # scheduling noise allowed above a toxic's promised delay


@pytest.fixture(scope="module")
def server():
    with ProxyServerThread(seed=SEED) as srv:
        print(f"toxiproxy seed {srv.seed}")
        yield srv


@pytest.fixture(scope="module")
def echo():
    srv = EchoServer().start()
    yield srv
    srv.close()


@pytest.fixture
def tp(server):
    client = connect(server.url)
    yield client
    client.reset()
    client.destroy_all()


@pytest.fixture
def proxy(tp, echo):
    return tp.create(upstream=echo.address, name="data")


@pytest.fixture
def api(server):
    def call(method: str, path: str, body=None):
        return requests.request(method, server.url + path, json=body, timeout=10)
    return call


def wait_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, float]:
    """Read until EOF; returns (bytes read, seconds until EOF)."""
    sock.settimeout(timeout_s)
    start = time.monotonic()
    received = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(received), time.monotonic() - start
        received.append(data)


def test_baseline_round_trip_is_fast(proxy):
    with dial(proxy.listen) as sock:
        assert round_trip_s(sock) < 0.1
        payload = bytes(range(256)) * 1000
        sock.sendall(payload)
        assert recv_exactly(sock, len(payload)) == payload


@pytest.mark.parametrize("stream", ["downstream", "upstream"])
def test_latency_adds_delay(proxy, stream):
    proxy.add_toxic(type="latency", stream=stream, attributes={"latency": 200})
    with dial(proxy.listen) as sock:
        for _ in range(2):
            rtt = round_trip_s(sock)
            assert 0.2 <= rtt < 0.2 + SLACK_S


def test_latency_is_not_cumulative_for_pipelined_data(proxy):
    proxy.add_toxic(type="latency", attributes={"latency": 200})
    with dial(proxy.listen) as sock:
        start = time.monotonic()
        for i in range(5):           # five writes 20 ms apart: each arrives ~200 ms later
            sock.sendall(b"x" * 100)
            time.sleep(0.02)
        assert recv_exactly(sock, 500) == b"x" * 500
        assert time.monotonic() - start < 0.2 + 0.1 + SLACK_S


def test_jitter_spreads_delays_within_bounds(proxy):
    proxy.add_toxic(type="latency", attributes={"latency": 100, "jitter": 80})
    with dial(proxy.listen) as sock:
        rtts = [round_trip_s(sock) for _ in range(10)]
    assert all(0.02 <= rtt < 0.18 + SLACK_S for rtt in rtts), rtts
    assert max(rtts) - min(rtts) > 0.03, rtts


def test_jitter_never_reorders_or_loses_bytes(proxy):
    proxy.add_toxic(type="latency", attributes={"latency": 30, "jitter": 30})
    messages = [f"<{i:04d}>".encode() for i in range(200)]
    with dial(proxy.listen) as sock:
        for message in messages:          # many small writes -> many chunks, each jittered
            sock.sendall(message)
        assert recv_exactly(sock, sum(map(len, messages))) == b"".join(messages)


def test_bandwidth_limits_rate(proxy):
    payload = b"b" * 50_000
    with dial(proxy.listen) as sock:
        start = time.monotonic()
        sock.sendall(payload)
        assert recv_exactly(sock, len(payload)) == payload
        unlimited_s = time.monotonic() - start
    proxy.add_toxic(type="bandwidth", attributes={"rate": 100})       # 100 KB/s
    with dial(proxy.listen) as sock:
        start = time.monotonic()
        sock.sendall(payload)
        assert recv_exactly(sock, len(payload)) == payload
        limited_s = time.monotonic() - start
    assert unlimited_s < 0.2
    assert 0.45 <= limited_s < 0.5 + 2 * SLACK_S


def test_timeout_drops_data_then_closes(proxy):
    proxy.add_toxic(type="timeout", stream="upstream", attributes={"timeout": 300})
    with dial(proxy.listen) as sock:
        sock.sendall(b"lost")
        data, elapsed_s = wait_closed(sock, timeout_s=5)
    assert data == b""
    assert 0.25 <= elapsed_s < 0.3 + SLACK_S


def test_timeout_zero_holds_forever_and_removal_closes(proxy):
    proxy.add_toxic(type="timeout", name="hold", attributes={"timeout": 0})
    with dial(proxy.listen) as sock:
        sock.sendall(b"held")
        sock.settimeout(0.5)
        with pytest.raises(socket.timeout):     # neither data nor a close within the wait
            sock.recv(10)
        proxy.destroy_toxic("hold")             # upstream: removing a timeout closes the link
        data, elapsed_s = wait_closed(sock, timeout_s=5)
    assert data == b"" and elapsed_s < 1.0


@pytest.mark.parametrize("stream", ["downstream", "upstream"])
def test_reset_peer_gives_econnreset(proxy, stream):
    proxy.add_toxic(type="reset_peer", stream=stream, attributes={"timeout": 0})
    with dial(proxy.listen) as sock:
        sock.sendall(b"boom")
        sock.settimeout(5)
        with pytest.raises(ConnectionResetError):
            sock.recv(10)


def test_reset_peer_waits_for_its_timeout(proxy):
    proxy.add_toxic(type="reset_peer", attributes={"timeout": 300})
    with dial(proxy.listen) as sock:
        start = time.monotonic()
        sock.sendall(b"boom")
        sock.settimeout(5)
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
        assert 0.25 <= time.monotonic() - start < 0.3 + SLACK_S


def test_slicer_delivers_every_byte_in_slices(proxy):
    payload = bytes(range(256)) * 40         # 10 KiB
    with dial(proxy.listen) as sock:         # without the slicer: a few large reads
        sock.sendall(payload)
        baseline_reads = _count_reads(sock, len(payload), payload)
    proxy.add_toxic(type="slicer", attributes={"average_size": 100, "size_variation": 50, "delay": 2000})
    with dial(proxy.listen) as sock:
        sock.sendall(payload)
        sliced_reads = _count_reads(sock, len(payload), payload)
    assert baseline_reads <= 5
    assert sliced_reads >= 20                 # ~100 slices 2 ms apart; reads may merge a few


def _count_reads(sock: socket.socket, n_bytes: int, expected: bytes) -> int:
    sock.settimeout(5)
    chunks = []
    got = 0
    while got < n_bytes:
        data = sock.recv(65536)
        assert data, "closed early"
        chunks.append(data)
        got += len(data)
    assert b"".join(chunks) == expected
    return len(chunks)


def test_limit_data_closes_after_n_bytes(proxy):
    proxy.add_toxic(type="limit_data", attributes={"bytes": 1000})
    with dial(proxy.listen) as sock:
        sock.sendall(b"a" * 600)
        assert recv_exactly(sock, 600) == b"a" * 600
        sock.sendall(b"b" * 2000)
        data, _ = wait_closed(sock, timeout_s=5)
    assert data == b"b" * 400


def test_slow_close_delays_the_close(proxy):
    with dial(proxy.listen) as sock:
        sock.sendall(CLOSE_COMMAND)
        _, fast_s = wait_closed(sock, timeout_s=5)
    proxy.add_toxic(type="slow_close", attributes={"delay": 400})
    with dial(proxy.listen) as sock:
        assert round_trip_s(sock) < 0.1       # data is not delayed, only the close
        sock.sendall(CLOSE_COMMAND)
        _, slow_s = wait_closed(sock, timeout_s=5)
    assert fast_s < 0.2
    assert 0.4 <= slow_s < 0.4 + SLACK_S


def test_toxicity_zero_never_applies(proxy):
    proxy.add_toxic(type="latency", toxicity=0.0, attributes={"latency": 1000})
    proxy.add_toxic(type="timeout", stream="upstream", toxicity=0.0, attributes={"timeout": 0})
    for _ in range(5):                        # the roll is per connection
        with dial(proxy.listen) as sock:
            assert round_trip_s(sock) < 0.2


def test_toxicity_one_always_applies(proxy):
    proxy.add_toxic(type="latency", toxicity=1.0, attributes={"latency": 150})
    for _ in range(3):
        with dial(proxy.listen) as sock:
            assert round_trip_s(sock) >= 0.15


def test_disabled_proxy_refuses_and_drops_live_connections(proxy):
    live = dial(proxy.listen)
    assert round_trip_s(live) < 0.1
    proxy.disable()
    live.settimeout(5)
    try:
        assert live.recv(10) == b""
    except ConnectionResetError:
        pass
    live.close()
    with pytest.raises(ConnectionRefusedError):
        dial(proxy.listen).close()
    proxy.enable()
    with dial(proxy.listen) as sock:
        assert round_trip_s(sock) < 0.1


def test_deleting_a_proxy_drops_live_connections(tp, proxy):
    live = dial(proxy.listen)
    assert round_trip_s(live) < 0.1
    proxy.destroy()
    live.settimeout(5)
    try:
        assert live.recv(10) == b""
    except ConnectionResetError:
        pass
    live.close()


def test_removing_a_toxic_restores_flow_on_a_live_connection(proxy):
    proxy.add_toxic(type="latency", name="slow", attributes={"latency": 10_000})
    with dial(proxy.listen) as sock:
        sock.sendall(b"ping")
        sock.settimeout(0.3)
        with pytest.raises(socket.timeout):
            sock.recv(10)
        start = time.monotonic()
        proxy.destroy_toxic("slow")
        sock.settimeout(5)
        assert recv_exactly(sock, 4) == b"ping"
        assert time.monotonic() - start < 0.5
        assert round_trip_s(sock) < 0.1


def test_removing_bandwidth_restores_full_speed_mid_transfer(proxy):
    proxy.add_toxic(type="bandwidth", name="thin", attributes={"rate": 1})     # 1 KB/s
    payload = b"z" * 20_000
    with dial(proxy.listen) as sock:
        sock.sendall(payload)
        sock.settimeout(5)
        first = sock.recv(65536)
        assert 0 < len(first) <= 1000
        proxy.destroy_toxic("thin")
        rest = recv_exactly(sock, len(payload) - len(first))
    assert first + rest == payload


def test_adding_and_updating_toxics_on_a_live_connection(proxy, api):
    with dial(proxy.listen) as sock:
        assert round_trip_s(sock) < 0.1
        proxy.add_toxic(type="latency", name="lat", attributes={"latency": 150})
        assert 0.15 <= round_trip_s(sock) < 0.15 + SLACK_S
        resp = api("PATCH", "/proxies/data/toxics/lat", {"attributes": {"latency": 300}})
        assert resp.status_code == 200
        assert 0.3 <= round_trip_s(sock) < 0.3 + SLACK_S
        proxy.add_toxic(type="limit_data", attributes={"bytes": 2})
        sock.sendall(b"abcd")
        data, _ = wait_closed(sock, timeout_s=5)
    assert data == b"ab"


def test_unreachable_upstream_closes_the_client(tp):
    dead = f"127.0.0.1:{free_port()}"      # a port with nothing listening
    proxy = tp.create(upstream=dead, name="dead")
    with dial(proxy.listen) as sock:
        try:
            data, _ = wait_closed(sock, timeout_s=5)
            assert data == b""
        except ConnectionResetError:
            pass


def test_throughput_without_toxics(proxy):
    payload = b"t" * (8 * 1024 * 1024)
    with dial(proxy.listen) as sock:
        start = time.monotonic()
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        assert len(recv_exactly(sock, len(payload))) == len(payload)
        sender.join()
        elapsed_s = time.monotonic() - start
    assert elapsed_s < 3.0, f"8 MiB echo through the proxy took {elapsed_s:.2f}s"
