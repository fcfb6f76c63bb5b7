"""The Prometheus endpoint of a real broker with TLS (`--tls-cert/--tls-key`), mutual TLS
(`--tls-client-auth required`) and HTTP basic auth (`--metrics-user`, `--metrics-password-file`),
scraped with a real HTTPS client (urllib with an SSL context): plaintext is refused, a client
without a certificate or with one from another CA fails the handshake, a wrong or missing
password gets 401, the right certificate and password get the metrics."""

from __future__ import annotations

import base64
import http.client
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from semel.cluster.tooling import certs
from semel.cluster.tooling.ports import free_ports

from tests.cluster import broker_harness as h

pytestmark = pytest.mark.slow  # a broker process

PASSWORD = "scrape-secret-1"
TIMEOUT_S = 20


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("metrics-tls")
    d, other = root / "certs", root / "other-ca"
    certs.create_ca(d)
    certs.create_leaf(d, "broker-1")
    certs.create_leaf(d, "prometheus", server=False)
    certs.create_ca(other)
    certs.create_leaf(other, "intruder", server=False)
    (root / "metrics-password").write_text(PASSWORD + "\n")
    (port,) = free_ports(1)
    c = h.Cluster(root, 1, internal_partitions=1, tls_cert=d / "broker-{id}.crt", tls_key=d / "broker-{id}.key",
                  tls_ca=d / "ca.crt", tls_client_auth="required", metrics_listen=f"127.0.0.1:{port}",
                  metrics_user="prometheus", metrics_password_file=root / "metrics-password")
    try:
        c.start_all()
        yield c, port, d, other
    finally:
        print(c.dump_logs())
        c.close()


def context(ca_dir: Path, client: tuple[Path, str] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_dir / "ca.crt"))
    if client is not None:
        cert_dir, name = client
        ctx.load_cert_chain(str(cert_dir / f"{name}.crt"), str(cert_dir / f"{name}.key"))
    return ctx


def get(url: str, ctx: ssl.SSLContext | None, user: str | None = None, password: str = PASSWORD) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if user is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=ctx) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("WWW-Authenticate", "")


def test_the_right_certificate_and_password_get_the_metrics(endpoint) -> None:
    c, port, d, _ = endpoint
    status, body = get(f"https://127.0.0.1:{port}/metrics", context(d, (d, "prometheus")), "prometheus")
    assert status == 200
    assert "semel_broker_up" in body and "semel_rpc_requests_total" in body
    assert "https://127.0.0.1" in c.log_tail(1, 400) and "client certificate required" in c.log_tail(1, 400)


def test_a_wrong_or_missing_password_gets_401(endpoint) -> None:
    _, port, d, _ = endpoint
    url = f"https://127.0.0.1:{port}/metrics"
    ctx = context(d, (d, "prometheus"))
    assert get(url, ctx) == (401, 'Basic realm="semel metrics"')
    assert get(url, ctx, "prometheus", "not-the-password")[0] == 401
    assert get(url, ctx, "someone", PASSWORD)[0] == 401


def test_plaintext_is_refused(endpoint) -> None:
    _, port, _, _ = endpoint
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
        get(f"http://127.0.0.1:{port}/metrics", None, "prometheus")


@pytest.mark.parametrize("client", ["none", "other CA"])
def test_a_client_without_a_certificate_of_the_ca_fails_the_handshake(endpoint, client: str) -> None:
    _, port, d, other = endpoint
    ctx = context(d, None if client == "none" else (other, "intruder"))
    # TLS 1.3: the server's refusal of the client certificate can arrive with the first read
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        get(f"https://127.0.0.1:{port}/metrics", ctx, "prometheus")


def test_the_broker_log_has_no_traceback_after_the_refusals(endpoint) -> None:
    c, port, d, other = endpoint
    for ctx in (None, context(d, None), context(other, (other, "intruder"))):
        try:
            get(f"{'http' if ctx is None else 'https'}://127.0.0.1:{port}/metrics", ctx)
        except (OSError, http.client.HTTPException):
            pass
    assert get(f"https://127.0.0.1:{port}/metrics", context(d, (d, "prometheus")), "prometheus")[0] == 200
    assert "Traceback" not in c.log_tail(1, 2000)


def test_cluster_up_secure_serves_metrics_over_https_with_basic_auth(tmp_path: Path) -> None:
    """`semel cluster up --secure --metrics-base-port M`: the endpoints are HTTPS with basic
    auth, the supervisor prints how to scrape them, and DATA_DIR/prometheus.yml says the same."""
    import signal

    import yaml

    from tests.cluster.test_cli_cluster_up import _free_block, _start_cluster_up

    base = _free_block(1)
    (metrics_port,) = free_ports(1)
    proc, lines = _start_cluster_up(tmp_path, 1, base, "--secure", "--metrics-base-port", str(metrics_port))
    try:
        text = "".join(lines)
        url = f"https://127.0.0.1:{metrics_port}/metrics"
        assert f"metrics: {url}" in text, text
        assert f"Prometheus: {tmp_path / 'prometheus.yml'}" in text and "curl --cacert" in text, text
        password_file = tmp_path / "metrics-password"
        assert password_file.stat().st_mode & 0o077 == 0
        (job,) = yaml.safe_load((tmp_path / "prometheus.yml").read_text())["scrape_configs"]
        assert job["scheme"] == "https" and job["static_configs"] == [{"targets": [f"127.0.0.1:{metrics_port}"]}]
        assert job["basic_auth"] == {"username": "prometheus", "password_file": str(password_file.resolve())}
        ctx = ssl.create_default_context(cafile=job["tls_config"]["ca_file"])
        password = password_file.read_text().splitlines()[0]
        status, body = get(url, ctx, "prometheus", password)
        assert status == 200 and "semel_broker_up" in body
        assert get(url, ctx)[0] == 401
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
            get(f"http://127.0.0.1:{metrics_port}/metrics", None, "prometheus", password)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
