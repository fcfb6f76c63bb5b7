"""The security flags every cluster-talking command takes, and `semel cert` / `semel user`.

Every command with `--bootstrap` also gets --tls-ca, --tls-cert, --tls-key, --user and
--password-file (main.py adds them); each defaults to its environment variable (SEMEL_TLS_CA,
SEMEL_TLS_CERT, SEMEL_TLS_KEY, SEMEL_USER, SEMEL_PASSWORD: `source DATA_DIR/admin.env` after
`semel cluster up --secure`). A given flag is exported into this process's environment before
the command runs, so every client the command builds (`semel.client.ClientSecurity.from_env`)
sees it. No flag takes a password itself: argv is visible to every user of the machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

SECURITY_FLAGS = (  # (flag, environment variable, help)
    ("--tls-ca", "SEMEL_TLS_CA", "PEM CA of the brokers' certificates: connect with TLS"),
    ("--tls-cert", "SEMEL_TLS_CERT", "PEM client certificate (mTLS; its CN is your principal)"),
    ("--tls-key", "SEMEL_TLS_KEY", "PEM key of --tls-cert"),
    ("--user", "SEMEL_USER", "user name for password authentication (needs TLS)"),
)
PASSWORD_FILE_FLAG = "--password-file"
PASSWORD_ENV = "SEMEL_PASSWORD"


def add_security_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security (defaults: the SEMEL_TLS_* / SEMEL_USER / SEMEL_PASSWORD variables)")
    for flag, env, text in SECURITY_FLAGS:
        group.add_argument(flag, default=None, help=f"{text} (default ${env})")
    group.add_argument(PASSWORD_FILE_FLAG, default=None,
                       help=f"file holding the password, '-' for stdin (default ${PASSWORD_ENV})")


def add_to_every_cluster_command(parser: argparse.ArgumentParser) -> None:
    """Give every (sub)command that has --bootstrap the security flags."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                add_to_every_cluster_command(sub)
    if any("--bootstrap" in a.option_strings for a in parser._actions) and not any(
            "--tls-ca" in a.option_strings for a in parser._actions):
        add_security_flags(parser)


def export_security_flags(args: argparse.Namespace) -> None:
    for flag, env, _ in SECURITY_FLAGS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            os.environ[env] = value
    path = getattr(args, "password_file", None)
    if path is not None:
        text = sys.stdin.readline() if path == "-" else Path(path).read_text()
        os.environ[PASSWORD_ENV] = text.rstrip("\r\n")


# --- semel cert ------------------------------------------------------------------------------
def add_commands(sub: argparse._SubParsersAction) -> None:
    cert = sub.add_parser("cert", help="a development CA and certificates for TLS (cryptography; no openssl)")
    csub = cert.add_subparsers(dest="cert_command", required=True)
    ca = csub.add_parser("create-ca", help="create DIR/ca.crt and DIR/ca.key")
    ca.add_argument("--dir", default="certs", help="directory (default certs)")
    ca.set_defaults(func=_cmd_create_ca)
    leaf = csub.add_parser("create", help="create DIR/NAME.crt and NAME.key signed by DIR/ca.*")
    leaf.add_argument("--dir", default="certs", help="directory holding ca.crt/ca.key (default certs)")
    leaf.add_argument("--name", required=True, help="file name and certificate CN (brokers: broker-N; users: their name)")
    leaf.add_argument("--host", action="append", default=[],
                      help="SAN: a host name or IP the certificate serves (repeat; default 127.0.0.1 and localhost)")
    leaf.add_argument("--client-only", action="store_true", help="a user's certificate (client use only, no SANs)")
    leaf.set_defaults(func=_cmd_create)

    user = sub.add_parser("user", help="users for password authentication (stored as SCRAM credentials)")
    usub = user.add_subparsers(dest="user_command", required=True)
    create = usub.add_parser("create", help="create a user or set its password")
    create.add_argument("name")
    create.add_argument("--password-stdin", action="store_true", required=True,
                        help="read the new password from the first line of stdin")
    create.add_argument("--mechanism", default="SCRAM-SHA-256", choices=("SCRAM-SHA-256", "SCRAM-SHA-512"))
    create.add_argument("--bootstrap", "-b", default=None, help="broker address(es) (default: $SEMEL_BOOTSTRAP)")
    create.set_defaults(func=_cmd_user_create)
    lst = usub.add_parser("list", help="list users and their mechanisms")
    lst.add_argument("--bootstrap", "-b", default=None, help="broker address(es) (default: $SEMEL_BOOTSTRAP)")
    lst.set_defaults(func=_cmd_user_list)
    delete = usub.add_parser("delete", help="delete a user")
    delete.add_argument("name")
    delete.add_argument("--bootstrap", "-b", default=None, help="broker address(es) (default: $SEMEL_BOOTSTRAP)")
    delete.set_defaults(func=_cmd_user_delete)
    cred = usub.add_parser("credential", help="print a SCRAM credential as JSON for a broker's "
                           "--bootstrap-users-file (offline: nothing is sent)")
    cred.add_argument("name")
    cred.add_argument("--password-stdin", action="store_true", required=True)
    cred.add_argument("--mechanism", default="SCRAM-SHA-256", choices=("SCRAM-SHA-256", "SCRAM-SHA-512"))
    cred.set_defaults(func=_cmd_user_credential)


def _cmd_create_ca(args: argparse.Namespace) -> int:
    from semel.cluster.tooling import certs

    files = certs.create_ca(args.dir)
    print(f"CA certificate {files.cert}, key {files.key} (keep the key off the brokers)")
    return 0


def _cmd_create(args: argparse.Namespace) -> int:
    from semel.cluster.tooling import certs

    hosts = () if args.client_only else (args.host or certs.LOOPBACK_SANS)
    try:
        files = certs.create_leaf(args.dir, args.name, hosts=hosts, server=not args.client_only)
    except (OSError, ValueError) as exc:
        print(f"semel cert create: {exc}", file=sys.stderr)
        return 1
    print(f"certificate {files.cert}, key {files.key} (CN {args.name}, principal User:{args.name})")
    return 0


def _read_new_password() -> str:
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise SystemExit("semel user: empty password on stdin")
    return password


def _user_op(args: argparse.Namespace, op: Any) -> int:
    from semel.client import Admin
    from semel.client.errors import ConfigError, SemelError

    try:
        with Admin(args.bootstrap, request_timeout_ms=10_000) as admin:
            return int(op(admin) or 0)
    except ConfigError as exc:
        print(f"semel user: {exc}", file=sys.stderr)
        return 2
    except SemelError as exc:
        print(f"semel user: error: {exc}", file=sys.stderr)
        return 1


def _cmd_user_create(args: argparse.Namespace) -> int:
    password = _read_new_password()

    def op(admin: Any) -> int:
        admin.upsert_user(args.name, password, args.mechanism)
        print(f"user {args.name} ({args.mechanism}) saved")
        return 0
    return _user_op(args, op)


def _cmd_user_list(args: argparse.Namespace) -> int:
    def op(admin: Any) -> int:
        for name, mechanisms in admin.list_users():
            print(f"{name}\t{','.join(mechanisms)}")
        return 0
    return _user_op(args, op)


def _cmd_user_delete(args: argparse.Namespace) -> int:
    def op(admin: Any) -> int:
        admin.delete_user(args.name)
        print(f"user {args.name} deleted")
        return 0
    return _user_op(args, op)


def bootstrap_users_json(name: str, password: str, mechanism: str = "SCRAM-SHA-256") -> dict[str, Any]:
    from semel import scram

    c = scram.make_credential(password, mechanism)
    b64 = base64.b64encode
    return {"users": [{"name": name, "mechanism": c.mechanism, "salt": b64(c.salt).decode(),
                       "iterations": c.iterations, "stored_key": b64(c.stored_key).decode(),
                       "server_key": b64(c.server_key).decode()}]}


def _cmd_user_credential(args: argparse.Namespace) -> int:
    from semel import scram

    problem = scram.user_name_problem(args.name)
    if problem:
        print(f"semel user credential: {problem}", file=sys.stderr)
        return 2
    print(json.dumps(bootstrap_users_json(args.name, _read_new_password(), args.mechanism), indent=2))
    return 0
