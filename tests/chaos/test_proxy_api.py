"""Toxiproxy v2 HTTP API conformance, driven by the unchanged toxiproxy-python client
(plus raw `requests` calls where the client has no method or hides the status code)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import requests
from semel.chaos import proxy as semel_proxy
from semel.chaos.proxy import ProxyServerProcess, ProxyServerThread, connect
from semel.chaos.proxy_testing import EchoServer, dial, round_trip_s, split_address
from toxiproxy import Toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

SEED = 20261128


@pytest.fixture(scope="module")
def server():
    with ProxyServerThread(seed=SEED) as srv:
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
def api(server):
    def call(method: str, path: str, body=None, raw: bytes | None = None, headers=None):
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        return requests.request(method, server.url + path, data=data, headers=headers, timeout=10)
    return call


def echo_s(address: str) -> float:
    """Round trip through a fresh connection to `address` (closed afterwards)."""
    with dial(address) as sock:
        return round_trip_s(sock)


def refused(address: str) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(split_address(address)) != 0


# --- server / version ---------------------------------------------------------------------


def test_version_and_running(tp, api):
    assert tp.running() is True
    raw = tp.version()                      # the client returns the raw body
    assert isinstance(raw, bytes)
    assert json.loads(raw)["version"].startswith("2.")
    assert api("GET", "/version").status_code == 200


def test_connect_points_the_class_global_client_at_the_server(server):
    connect(server.url)
    assert (APIConsumer.host, APIConsumer.port) == (server.host, server.port)


def test_toxiproxy_url_env_wins(monkeypatch, server):
    monkeypatch.setenv("TOXIPROXY_URL", f"http://{server.host}:{server.port}")
    APIConsumer.host, APIConsumer.port = "192.0.2.1", 1
    client = connect()
    assert (APIConsumer.host, APIConsumer.port) == (server.host, server.port)
    assert client.running()


def test_parse_url_forms():
    assert semel_proxy.parse_url("http://10.0.0.1:9000") == ("10.0.0.1", 9000)
    assert semel_proxy.parse_url("localhost:8475") == ("localhost", 8475)
    assert semel_proxy.parse_url("http://toxiproxy") == ("toxiproxy", 8474)


def test_without_env_connect_starts_our_own_server(monkeypatch, server):
    monkeypatch.delenv("TOXIPROXY_URL", raising=False)
    client = connect()
    own = semel_proxy.shared_server()
    assert (APIConsumer.host, APIConsumer.port) == (own.host, own.port)
    assert json.loads(client.version())["version"]
    connect(server.url)   # leave the class-global client pointed at the module's server


# --- proxies ------------------------------------------------------------------------------


def test_create_reports_real_port_and_lists(tp, api, echo):
    proxy = tp.create(upstream=echo.address, name="p1")
    host, port = split_address(proxy.listen)
    assert host == "127.0.0.1" and port != 0
    assert proxy.enabled is True and proxy.upstream == echo.address
    listed = tp.proxies()
    assert set(listed) == {"p1"} and listed["p1"].listen == proxy.listen
    raw = api("GET", "/proxies").json()
    assert raw == {"p1": {"name": "p1", "listen": proxy.listen, "upstream": echo.address,
                          "enabled": True, "toxics": []}}
    shown = api("GET", "/proxies/p1")
    assert shown.status_code == 200 and shown.json() == raw["p1"]
    assert echo_s(proxy.listen) < 1.0


def test_create_status_codes(tp, api, echo):
    created = api("POST", "/proxies", {"name": "p", "upstream": echo.address, "listen": "127.0.0.1:0"})
    assert created.status_code == 201
    again = api("POST", "/proxies", {"name": "p", "upstream": echo.address, "listen": "127.0.0.1:0"})
    assert again.status_code == 409
    assert again.json() == {"error": "proxy already exists", "status": 409}
    with pytest.raises(ProxyExists):        # the client's own pre-check
        tp.create(upstream=echo.address, name="p")
    with pytest.raises(ProxyExists):        # the server's 409 through the client's validator
        APIConsumer.post("/proxies", json={"name": "p", "upstream": echo.address})


@pytest.mark.parametrize("body, message", [
    ({"upstream": "127.0.0.1:1"}, "missing required field: name"),
    ({"name": "x"}, "missing required field: upstream"),
    ({"name": "x", "upstream": "no-port"}, "invalid upstream address"),
    ({"name": "x", "upstream": "127.0.0.1:1", "listen": "127.0.0.1:99999"}, "invalid listen address"),
    ({"name": "x", "upstream": "127.0.0.1:1", "enabled": "yes"}, "bad request body"),
    (["not", "an", "object"], "bad request body"),
])
def test_create_bad_input_is_400(tp, api, body, message):
    resp = api("POST", "/proxies", body)
    assert resp.status_code == 400
    assert resp.json()["status"] == 400 and message in resp.json()["error"]
    with pytest.raises(InvalidToxic):        # what the client raises for any 400
        APIConsumer.post("/proxies", json=body)
    assert tp.proxies() == {}


def test_create_invalid_json_is_400(api):
    resp = api("POST", "/proxies", raw=b"{nope")
    assert resp.status_code == 400 and resp.json()["error"].startswith("bad request body")


def test_create_on_busy_port_fails_and_creates_nothing(tp, api, echo):
    first = tp.create(upstream=echo.address, name="first")
    resp = api("POST", "/proxies", {"name": "second", "upstream": echo.address, "listen": first.listen})
    assert resp.status_code == 500 and "listen tcp" in resp.json()["error"]
    assert set(tp.proxies()) == {"first"}


def test_create_disabled_does_not_listen(tp, echo):
    proxy = tp.create(upstream=echo.address, name="off", listen="127.0.0.1:0", enabled=False)
    assert proxy.enabled is False
    assert tp.get_proxy("off").enabled is False


def test_get_missing_proxy_is_404(tp, api):
    resp = api("GET", "/proxies/nope")
    assert resp.status_code == 404 and resp.json() == {"error": "proxy not found", "status": 404}
    with pytest.raises(NotFound):
        APIConsumer.get("/proxies/nope")
    assert tp.get_proxy("nope") is None


def test_enable_disable_through_client(tp, echo):
    proxy = tp.create(upstream=echo.address, name="toggle")
    proxy.disable()
    assert tp.get_proxy("toggle").enabled is False and refused(proxy.listen)
    proxy.enable()
    assert tp.get_proxy("toggle").enabled is True
    assert echo_s(proxy.listen) < 1.0
    with proxy.down():
        assert refused(proxy.listen)
    assert not refused(proxy.listen)


def test_update_with_post_and_patch(tp, api, echo):
    proxy = tp.create(upstream=echo.address, name="upd")
    resp = api("PATCH", "/proxies/upd", {"enabled": False})
    assert resp.status_code == 200 and resp.json()["enabled"] is False
    resp = api("POST", "/proxies/upd", {"enabled": True})
    assert resp.status_code == 200 and resp.json()["enabled"] is True
    assert resp.json()["listen"] == proxy.listen          # same port again
    resp = api("PATCH", "/proxies/upd", {"listen": "127.0.0.1:0"})
    new_listen = resp.json()["listen"]
    assert resp.status_code == 200 and new_listen != proxy.listen and resp.json()["enabled"] is True
    assert refused(proxy.listen) and echo_s(new_listen) < 1.0
    resp = api("PATCH", "/proxies/upd", {"upstream": "127.0.0.1:1"})
    assert resp.status_code == 200 and resp.json()["upstream"] == "127.0.0.1:1"
    assert api("PATCH", "/proxies/upd", {"enabled": "no"}).status_code == 400
    assert api("PATCH", "/proxies/missing", {"enabled": True}).status_code == 404


def test_delete_is_204_then_404(tp, api, echo):
    proxy = tp.create(upstream=echo.address, name="gone")
    assert proxy.destroy() is True
    assert refused(proxy.listen)
    resp = api("DELETE", "/proxies/gone")
    assert resp.status_code == 404
    created = api("POST", "/proxies", {"name": "gone", "upstream": echo.address})
    assert created.status_code == 201
    resp = api("DELETE", "/proxies/gone")
    assert resp.status_code == 204 and resp.content == b""


def test_populate_endpoint(tp, api, echo):
    body = [{"name": "a", "upstream": echo.address, "listen": "127.0.0.1:0"},
            {"name": "b", "upstream": echo.address, "listen": "127.0.0.1:0", "enabled": False}]
    resp = api("POST", "/populate", body)
    assert resp.status_code == 201
    proxies = {p["name"]: p for p in resp.json()["proxies"]}
    assert set(proxies) == {"a", "b"} and proxies["a"]["enabled"] and not proxies["b"]["enabled"]
    a_listen = proxies["a"]["listen"]
    # unchanged listen + upstream: kept as is; a changed upstream: replaced
    resp = api("POST", "/populate", [{"name": "a", "upstream": echo.address, "listen": a_listen},
                                     {"name": "b", "upstream": "127.0.0.1:1"}])
    assert resp.status_code == 201
    again = {p["name"]: p for p in resp.json()["proxies"]}
    assert again["a"]["listen"] == a_listen and again["b"]["upstream"] == "127.0.0.1:1"
    # one bad entry: 400 and nothing applied
    resp = api("POST", "/populate", [{"name": "c", "upstream": echo.address}, {"name": "d"}])
    assert resp.status_code == 400
    assert resp.json()["error"] == "missing required field: upstream at proxy 2"
    assert set(tp.proxies()) == {"a", "b"}
    assert api("POST", "/populate", {"name": "x"}).status_code == 400


def test_client_populate(tp, echo):
    created = tp.populate([{"name": "c1", "upstream": echo.address, "listen": "127.0.0.1:0"}])
    assert [p.name for p in created] == ["c1"]
    assert set(tp.proxies()) == {"c1"}


def test_reset_enables_all_and_removes_toxics(tp, api, echo):
    proxy = tp.create(upstream=echo.address, name="r")
    proxy.add_toxic(type="latency", attributes={"latency": 1000})
    proxy.disable()
    assert api("POST", "/reset").status_code == 204
    assert tp.reset() is True
    shown = api("GET", "/proxies/r").json()
    assert shown["enabled"] is True and shown["toxics"] == []
    assert echo_s(proxy.listen) < 0.5


# --- toxics ---------------------------------------------------------------------------------


def test_toxic_create_defaults_and_listing(tp, api, echo):
    proxy = tp.create(upstream=echo.address, name="t")
    assert proxy.add_toxic(type="latency", attributes={"latency": 5}) is None   # client quirk
    resp = api("POST", "/proxies/t/toxics", {"type": "slicer", "stream": "upstream",
                                             "attributes": {"average_size": 10}})
    assert resp.status_code == 200
    assert resp.json() == {"name": "slicer_upstream", "type": "slicer", "stream": "upstream",
                           "toxicity": 1.0,
                           "attributes": {"average_size": 10, "size_variation": 0, "delay": 0}}
    toxics = proxy.toxics()
    assert set(toxics) == {"latency_downstream", "slicer_upstream"}
    latency = toxics["latency_downstream"]
    assert (latency.type, latency.stream, latency.toxicity) == ("latency", "downstream", 1.0)
    assert latency.attributes == {"latency": 5, "jitter": 0}
    listed = api("GET", "/proxies/t/toxics").json()
    assert [t["name"] for t in listed] == ["slicer_upstream", "latency_downstream"]   # upstream first
    assert api("GET", "/proxies/t").json()["toxics"] == listed
    shown = api("GET", "/proxies/t/toxics/latency_downstream")
    assert shown.status_code == 200 and shown.json()["attributes"]["latency"] == 5


@pytest.mark.parametrize("toxic_type, attributes", [
    ("latency", {"latency": 1, "jitter": 2}),
    ("bandwidth", {"rate": 3}),
    ("slow_close", {"delay": 4}),
    ("timeout", {"timeout": 5}),
    ("reset_peer", {"timeout": 6}),
    ("slicer", {"average_size": 7, "size_variation": 1, "delay": 8}),
    ("limit_data", {"bytes": 9}),
])
def test_every_toxic_type_round_trips(tp, api, echo, toxic_type, attributes):
    proxy = tp.create(upstream=echo.address, name="types")
    proxy.add_toxic(type=toxic_type, name="x", stream="upstream", toxicity=0.5, attributes=attributes)
    shown = api("GET", "/proxies/types/toxics/x").json()
    assert shown == {"name": "x", "type": toxic_type, "stream": "upstream", "toxicity": 0.5,
                     "attributes": attributes}


def test_toxic_errors(tp, api, echo):
    tp.create(upstream=echo.address, name="te")
    cases = [
        ({"type": "nope"}, 400, "invalid toxic type"),
        ({"type": "latency", "stream": "sideways"}, 400,
         "stream was invalid, can be either upstream or downstream"),
        ({"type": "latency", "attributes": {"latency": "slow"}}, 400, "bad request body"),
        ({"type": "latency", "attributes": {"latency": -1}}, 400, "bad request body"),
        ({"type": "latency", "toxicity": 1.5}, 400, "bad request body"),
        ({"type": "slicer", "attributes": {"average_size": 0}}, 400, "bad request body"),
    ]
    for body, status, message in cases:
        resp = api("POST", "/proxies/te/toxics", body)
        assert resp.status_code == status, body
        assert resp.json()["status"] == status and resp.json()["error"].startswith(message), body
    with pytest.raises(InvalidToxic):
        tp.get_proxy("te").add_toxic(type="nope")
    assert api("POST", "/proxies/te/toxics", {"type": "latency"}).status_code == 200
    dup = api("POST", "/proxies/te/toxics", {"type": "latency"})
    assert dup.status_code == 409 and dup.json() == {"error": "toxic already exists", "status": 409}
    assert api("POST", "/proxies/missing/toxics", {"type": "latency"}).status_code == 404
    assert api("GET", "/proxies/missing/toxics").status_code == 404
    missing = api("GET", "/proxies/te/toxics/nope")
    assert missing.status_code == 404 and missing.json() == {"error": "toxic not found", "status": 404}
    assert api("DELETE", "/proxies/te/toxics/nope").status_code == 404
    assert api("PATCH", "/proxies/te/toxics/nope", {"toxicity": 0}).status_code == 404


def test_toxic_update_merges_attributes(tp, api, echo):
    tp.create(upstream=echo.address, name="tu")
    api("POST", "/proxies/tu/toxics", {"type": "latency", "name": "lat",
                                       "attributes": {"latency": 10, "jitter": 2}})
    resp = api("PATCH", "/proxies/tu/toxics/lat", {"attributes": {"latency": 20}})
    assert resp.status_code == 200
    assert resp.json()["attributes"] == {"latency": 20, "jitter": 2}
    resp = api("POST", "/proxies/tu/toxics/lat", {"toxicity": 0.25, "type": "bandwidth",
                                                  "stream": "upstream"})
    assert resp.status_code == 200
    assert resp.json() == {"name": "lat", "type": "latency", "stream": "downstream", "toxicity": 0.25,
                           "attributes": {"latency": 20, "jitter": 2}}
    assert api("PATCH", "/proxies/tu/toxics/lat", {"attributes": {"jitter": "x"}}).status_code == 400
    assert api("GET", "/proxies/tu/toxics/lat").json()["attributes"] == {"latency": 20, "jitter": 2}


def test_toxic_delete_is_204(tp, api, echo):
    proxy = tp.create(upstream=echo.address, name="td")
    proxy.add_toxic(type="timeout", name="t0", attributes={"timeout": 0})
    assert proxy.destroy_toxic("t0") is True
    assert proxy.toxics() == {}
    api("POST", "/proxies/td/toxics", {"type": "latency"})
    resp = api("DELETE", "/proxies/td/toxics/latency_downstream")
    assert resp.status_code == 204 and resp.content == b""


# --- HTTP edge ------------------------------------------------------------------------------


def test_unknown_route_and_method(api):
    assert api("GET", "/nope").status_code == 404
    assert api("GET", "/proxies/a/b/c/d/e").status_code == 404
    resp = api("DELETE", "/proxies")
    assert resp.status_code == 405 and resp.json()["status"] == 405
    assert api("PUT", "/reset").status_code == 405


def test_browsers_are_refused(api):
    resp = api("GET", "/proxies", headers={"User-Agent": "Mozilla/5.0"})
    assert resp.status_code == 403


def test_keep_alive_session(server, echo):
    with requests.Session() as session:
        for i in range(3):
            resp = session.post(server.url + "/proxies",
                                json={"name": f"k{i}", "upstream": echo.address}, timeout=10)
            assert resp.status_code == 201
        assert set(session.get(server.url + "/proxies", timeout=10).json()) >= {"k0", "k1", "k2"}
        for i in range(3):
            assert session.delete(server.url + f"/proxies/k{i}", timeout=10).status_code == 204


def test_expect_100_continue(server, echo):
    body = json.dumps({"name": "curl", "upstream": echo.address}).encode()
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"POST /proxies HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 201 Created\r\n")
    requests.delete(server.url + "/proxies/curl", timeout=10)


def test_oversized_body_is_413(api):
    resp = api("POST", "/proxies", raw=b"x" * (2 * 1024 * 1024))
    assert resp.status_code == 413


# --- the entry point --------------------------------------------------------------------------


def test_config_populates_at_start(echo):
    config = [{"name": "pre", "upstream": echo.address, "listen": "127.0.0.1:0"}]
    with ProxyServerThread(seed=SEED, config=config) as srv:
        listed = requests.get(srv.url + "/proxies", timeout=10).json()
        assert set(listed) == {"pre"} and listed["pre"]["enabled"] is True
        assert echo_s(listed["pre"]["listen"]) < 1.0


def test_server_thread_reports_a_busy_port(server):
    with pytest.raises(RuntimeError, match="failed to start"):
        ProxyServerThread(port=server.port).start()


def test_entry_point_exits_1_on_a_busy_port(server):
    done = subprocess.run([sys.executable, "-m", "semel.chaos.proxy", "--host", server.host,
                           "--port", str(server.port)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "semel-toxiproxy:" in done.stderr


def test_subprocess_entry_point_serves_and_stops_gracefully(echo):
    proc = ProxyServerProcess(seed=SEED).start()
    try:
        client = Toxiproxy()
        client.update_api_consumer(proc.host, proc.port)
        proxy = client.create(upstream=echo.address, name="sub")
        sock = dial(proxy.listen)
        assert round_trip_s(sock) < 1.0
    finally:
        code = proc.stop()
    assert code == 0
    assert refused(f"{proc.host}:{proc.port}") and refused(proxy.listen)
    sock.settimeout(5)
    try:
        assert sock.recv(10) == b""      # the live connection was dropped on shutdown
    except ConnectionResetError:
        pass
    sock.close()
