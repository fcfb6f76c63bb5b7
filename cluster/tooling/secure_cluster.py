"""`semel cluster up --secure`: the files a local cluster needs to run with TLS and
authentication, made in DATA_DIR (and kept across restarts on the same DATA_DIR):

  certs/ca.crt, ca.key          a development CA (`certs.py`)
  certs/broker-N.crt, .key      broker N's certificate: CN broker-N, SANs 127.0.0.1, localhost
                                and the host it advertises
  bootstrap-users.json          the super user `admin`'s SCRAM credential (no password)
  admin.env                     (mode 0600) `export SEMEL_BOOTSTRAP=... SEMEL_TLS_CA=...
                                SEMEL_USER=admin SEMEL_PASSWORD=...`: `source` it, then run `semel`
  metrics-password              (mode 0600, with --metrics-base-port) the password of the user
                                `prometheus` the HTTPS metrics endpoints ask for (basic auth)
  prometheus.yml                (with --metrics-base-port) a Prometheus scrape config for the
                                brokers: https, the CA, that user and password file
  kafka-client.properties       (mode 0600, with Kafka listeners) the same user for Kafka clients:
                                bootstrap.servers, security.protocol=SASL_SSL,
                                sasl.mechanism(s)=SCRAM-SHA-256, sasl.username/password,
                                ssl.ca.location (librdkafka/kcat `-F`; confluent-kafka: pass the
                                pairs as its config dict)

The brokers get --tls-cert/--tls-key/--tls-ca, --authentication required, --authorizer on
(ACLs on the gRPC and the Kafka ports, deny by default: `semel acl add` grants other users),
--super-users User:admin and
--bootstrap-users-file; they prove themselves to each other with the token
derived from DATA_DIR/raft-secret (cluster/broker/security.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shlex
from collections.abc import Sequence
from pathlib import Path

from semel import scram
from semel.client.security import ClientSecurity
from semel.cluster.tooling import certs

ADMIN_USER = "admin"
ADMIN_ENV_FILE = "admin.env"
KAFKA_CLIENT_FILE = "kafka-client.properties"
METRICS_USER = "prometheus"
METRICS_PASSWORD_FILE = "metrics-password"
PROMETHEUS_CONFIG_FILE = "prometheus.yml"
BOOTSTRAP_USERS_FILE = "bootstrap-users.json"
CERTS_DIR = "certs"
BROKER_ID_PLACEHOLDER = "{broker_id}"  # replaced in broker arguments by each broker's id


@dataclasses.dataclass(frozen=True, slots=True)
class SecureSetup:
    broker_args: tuple[str, ...]
    client: ClientSecurity
    admin_env: Path
    kafka_client: Path | None = None  # kafka-client.properties (None: no Kafka listeners)
    metrics_password: Path | None = None  # metrics-password (None: no metrics endpoints)
    prometheus_config: Path | None = None  # prometheus.yml (None: no metrics endpoints)

    def scrape_hint(self, url: str) -> str:
        """A command that scrapes one endpoint the way Prometheus will."""
        assert self.metrics_password is not None
        return (f"curl --cacert {shlex.quote(self.client.tls_ca)} -u {METRICS_USER}:\"$(cat "
                f"{shlex.quote(str(self.metrics_password))})\" {url}")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _read_env_password(path: Path) -> str:
    for line in path.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        if key == "SEMEL_PASSWORD":
            return shlex.split(value)[0]
    return ""


def kafka_client_properties(kafka_bootstrap: str, ca_file: str, user: str, password: str) -> str:
    """librdkafka's configuration (kcat -F, `key=value` lines) for a SASL_SSL + SCRAM client."""
    pairs = (("bootstrap.servers", kafka_bootstrap), ("security.protocol", "SASL_SSL"),
             ("sasl.mechanisms", "SCRAM-SHA-256"), ("sasl.username", user), ("sasl.password", password),
             ("ssl.ca.location", ca_file))
    return "".join(f"{k}={v}\n" for k, v in pairs)


def prometheus_config(targets: Sequence[str], ca_file: str, password_file: str) -> str:
    """A Prometheus configuration that scrapes `targets` over HTTPS with basic auth."""
    return "\n".join((
        "# Made by `semel cluster up --secure`: prometheus --config.file=THIS_FILE",
        "scrape_configs:",
        "  - job_name: semel",
        "    scheme: https",
        "    tls_config:",
        f"      ca_file: {json.dumps(ca_file)}",
        "    basic_auth:",
        f"      username: {METRICS_USER}",
        f"      password_file: {json.dumps(password_file)}",
        "    static_configs:",
        f"      - targets: {json.dumps(list(targets))}",
        ""))


def prepare(data_dir: str | Path, broker_hosts: Sequence[tuple[int, str]], bootstrap: str,
            kafka_bootstrap: str = "", metrics_targets: Sequence[str] = ()) -> SecureSetup:
    """Create (or reuse) the CA, the broker certificates, the admin user, admin.env, (with
    Kafka listeners) kafka-client.properties and (with metrics endpoints, `host:port` each) the
    metrics password and prometheus.yml."""
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    cert_dir = root / CERTS_DIR
    if not certs.ca_files(cert_dir).cert.exists():
        certs.create_ca(cert_dir)
    for broker_id, host in broker_hosts:
        name = f"broker-{broker_id}"
        if not certs.leaf_files(cert_dir, name).cert.exists():
            certs.create_leaf(cert_dir, name, hosts=(*certs.LOOPBACK_SANS, host))
    env_path, users_path = root / ADMIN_ENV_FILE, root / BOOTSTRAP_USERS_FILE
    password = _read_env_password(env_path) if env_path.exists() and users_path.exists() else ""
    if not password:
        password = secrets.token_urlsafe(24)
        c = scram.make_credential(password)
        import base64

        b64 = base64.b64encode
        _write_private(users_path, json.dumps({"users": [{
            "name": ADMIN_USER, "mechanism": c.mechanism, "salt": b64(c.salt).decode(), "iterations": c.iterations,
            "stored_key": b64(c.stored_key).decode(), "server_key": b64(c.server_key).decode()}]}, indent=2) + "\n")
    ca = str(certs.ca_files(cert_dir).cert.resolve())
    _write_private(env_path, "".join(f"export {k}={shlex.quote(v)}\n" for k, v in (
        ("SEMEL_BOOTSTRAP", bootstrap), ("SEMEL_TLS_CA", ca), ("SEMEL_USER", ADMIN_USER),
        ("SEMEL_PASSWORD", password))))
    kafka_client = None
    if kafka_bootstrap:
        kafka_client = root / KAFKA_CLIENT_FILE
        _write_private(kafka_client, kafka_client_properties(kafka_bootstrap, ca, ADMIN_USER, password))
    leaf = certs.leaf_files(cert_dir, f"broker-{BROKER_ID_PLACEHOLDER}")
    args: tuple[str, ...] = ("--tls-cert", str(leaf.cert.resolve()), "--tls-key", str(leaf.key.resolve()), "--tls-ca", ca,
            "--authentication", "required", "--super-users", f"User:{ADMIN_USER}",
            "--bootstrap-users-file", str(users_path.resolve()))
    # ACLs, deny by default, on both front ends; admin (the user of admin.env and
    # kafka-client.properties) is a super user, so the quickstart needs no grant
    args += ("--authorizer", "on")
    metrics_password = scrape_config = None
    if metrics_targets:  # the endpoints serve HTTPS (the brokers' --tls-cert) and ask for this user
        metrics_password = root / METRICS_PASSWORD_FILE
        if not metrics_password.exists():
            _write_private(metrics_password, secrets.token_urlsafe(24) + "\n")
        scrape_config = root / PROMETHEUS_CONFIG_FILE
        scrape_config.write_text(prometheus_config(metrics_targets, ca, str(metrics_password.resolve())))
        args += ("--metrics-user", METRICS_USER, "--metrics-password-file", str(metrics_password.resolve()))
    return SecureSetup(args, ClientSecurity(tls_ca=ca, username=ADMIN_USER, password=password), env_path,
                       kafka_client, metrics_password, scrape_config)
