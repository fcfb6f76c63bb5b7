"""The broker's transport security: TLS on its gRPC port, TLS to its peers, and the server
interceptor that authenticates every call (`principal.Authenticator`) and keeps the broker-only
services to brokers.

Who may call what (deploy/README.md, "Security"):
  * `grpc.health.v1.Health`: anyone (probes); everything else needs an authenticated principal
    when `--authentication required` (UNAUTHENTICATED otherwise, with a message saying how).
  * `semel.v1.Replication`, `semel.v1.Controller`, `semel.v1.TxnMarkers` (replica fetch, broker
    heartbeats, transaction markers and their verification): brokers only
    (`principal.is_broker`) whenever authentication or mTLS is required; anyone else gets
    PERMISSION_DENIED. One port serves clients and brokers: grpcio offers no optional client
    certificate, so a port either demands certificates from every client or from none; brokers
    therefore also prove themselves with a token derived from the Raft secret, which lets
    password clients and brokers share the port (a separate inter-broker listener would need a
    second advertised address in every registration and voter list; see deploy/README.md).
  * The principal of the current call is `current_principal()` (for an authorizer).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import inspect
import logging
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from semel import scram, tls
from semel.cluster.broker import authorizer
from semel.cluster.metadata.acl import CLUSTER, CLUSTER_NAME, CREATE, TOPIC, AclBinding
from semel.cluster.broker.principal import (
    AuthFailure,
    Authenticator,
    PasswordCheck,
    Principal,
    is_broker,
)

log = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
BROKER_ONLY_PREFIXES = ("/semel.v1.Replication/", "/semel.v1.Controller/", "/semel.v1.TxnMarkers/")
ERROR_CODE_TRAILER = "x-semel-error-code"  # the ErrorCode name of an authorization refusal
BROKER_KEY_CONTEXT = b"semel broker token key v1"
UNAUTHENTICATED_MESSAGE = ("authentication required: connect with TLS and a client certificate signed by the "
                           "cluster CA, or send a user and password (semel --user / SEMEL_USER, SEMEL_PASSWORD)")

_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("semel_principal", default=None)


def current_principal() -> Principal | None:
    """The principal of the call being served (None outside a call or before authentication)."""
    return _current.get()


def bind_principal(p: Principal) -> None:
    """Make `p` the current principal of the running task (the Kafka listener does it for
    each request, so code shared with the gRPC services sees its caller the same way)."""
    _current.set(p)


def broker_key(raft_secret: bytes | None) -> bytes | None:
    """The key broker tokens are made with: derived from (never equal to) the Raft secret."""
    return None if raft_secret is None else hmac.new(raft_secret, BROKER_KEY_CONTEXT, hashlib.sha256).digest()


def load_bootstrap_users(path: str) -> dict[str, tuple[scram.ScramCredential, ...]]:
    """`{"users": [{"name", "mechanism", "salt", "iterations", "stored_key", "server_key"}]}`
    (bytes base64) -> credentials by user; ValueError with the reason for a bad file."""
    if not path:
        return {}
    try:
        entries = json.loads(Path(path).read_text())["users"]
        out: dict[str, tuple[scram.ScramCredential, ...]] = {}
        for e in entries:
            c = scram.ScramCredential(e["mechanism"], base64.b64decode(e["salt"]), int(e["iterations"]),
                                      base64.b64decode(e["stored_key"]), base64.b64decode(e["server_key"]))
            problem = scram.user_name_problem(e["name"]) or scram.check_credential(c)
            if problem:
                raise ValueError(problem)
            out[e["name"]] = (*out.get(e["name"], ()), c)
        return out
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"--bootstrap-users-file {path}: {exc}") from exc


class BrokerSecurity:
    def __init__(self, broker_id: int, files: tls.TlsFiles, client_auth: str, authentication: str,
                 broker_principals: Sequence[str], raft_secret: bytes | None,
                 users: Callable[[str], Sequence[scram.ScramCredential]], super_users: Sequence[str] = (),
                 bootstrap_users: Mapping[str, tuple[scram.ScramCredential, ...]] | None = None,
                 authorizer_on: bool = False, acls: Callable[[], Sequence[AclBinding]] = tuple) -> None:
        self.broker_id = broker_id
        self.authorizer_on = authorizer_on
        self.acls = acls
        self.super_users = frozenset(super_users)
        static = dict(bootstrap_users or {})

        def lookup(name: str) -> Sequence[scram.ScramCredential]:
            return tuple(users(name)) or static.get(name, ())

        self.users = lookup  # the SCRAM credentials of a user (quorum, else the bootstrap file)
        self.files = files
        self.tls_on = bool(files.cert_file)
        self.client_auth = client_auth
        self.required = authentication == "required"
        self.brokers_only = self.required or client_auth == "required"
        self.broker_principals = frozenset(broker_principals)
        self._broker_key = broker_key(raft_secret)
        self.authenticator = Authenticator(lookup, self._broker_key)
        if self.required and self._broker_key is None and client_auth != "required":
            raise ValueError("--authentication required: brokers must prove themselves to each other; give the "
                             "cluster a Raft secret (--raft-secret-file / SEMEL_RAFT_SECRET) or require client "
                             "certificates (--tls-client-auth required, broker certificates named broker-N)")

    def bind(self, server: grpc.aio.Server, address: str) -> int:
        if not self.tls_on:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, tls.server_credentials(self.files, self.client_auth))

    def open_channel(self, address: str, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
        """A channel to another broker: TLS with our certificate as client certificate, and the
        broker token on every call, when TLS is on."""
        if not self.tls_on:
            return grpc.aio.insecure_channel(address, options=options)
        return grpc.aio.secure_channel(address, tls.channel_credentials(self.files, self.broker_credentials()),
                                       options=options)

    def broker_credentials(self) -> list[tuple[str, str]]:
        """The call metadata that proves this broker to another (none without a Raft secret, or
        without TLS: credentials never travel in plaintext)."""
        if not self.tls_on or self._broker_key is None:
            return []
        return [(tls.BROKER_ID_HEADER, str(self.broker_id)),
                (tls.BROKER_TOKEN_HEADER, tls.broker_token(self._broker_key, self.broker_id))]

    def identify_connection(self, ssl_object: Any, metadata: Mapping[str, str],
                            host: str) -> Principal | AuthFailure | PasswordCheck:
        """Who is on a connection served by Python's `ssl` (the replication transport): the
        same `Authenticator.identify` as a gRPC call, fed the connection's TLS state and the
        metadata its hello carried."""
        auth_context: dict[str, list[bytes]] = {}
        if ssl_object is not None:
            auth_context["transport_security_type"] = [b"ssl"]
            cn = tls.certificate_name(ssl_object)
            if cn:
                auth_context["x509_common_name"] = [cn.encode()]
        peer = f"ipv6:[{host}]:0" if ":" in host else f"ipv4:{host}:0"
        return self.authenticator.identify(auth_context, tuple(metadata.items()), peer)

    def broker_only_refusal(self, found: Principal, what: str) -> str | None:
        """Why `found` may not call a broker-only service (None: it may): the rules of
        `AuthInterceptor._gate` and of the authorizer's broker-only methods, in one place for
        the transports that are not gRPC."""
        if self.required and not found.authenticated:
            return UNAUTHENTICATED_MESSAGE
        if (self.brokers_only or self.authorizer_on) and not is_broker(found, self.broker_principals):
            return f"{what} is for brokers only; {found.principal} is not a broker principal"
        return None

    async def require_super_user(self, context: grpc.aio.ServicerContext[Any, Any], what: str) -> None:
        """Aborts with PERMISSION_DENIED unless authentication is off or the caller is a super
        user (or a broker)."""
        if not self.required or self.authorizer_on:  # the authorizer checked ALTER on the cluster already
            return
        p = current_principal()
        if p is not None and (p.principal in self.super_users or is_broker(p, self.broker_principals)):
            return
        name = p.principal if p is not None else "User:ANONYMOUS"
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{what} is for super users (--super-users); "
                            f"{name} is not one")

    def interceptor(self) -> AuthInterceptor:
        return AuthInterceptor(self)

    def may_create_topic(self, name: str) -> bool:
        """May the caller being served auto-create topic `name`? Kafka's rule: CREATE on the
        cluster or on the topic (only asked with the authorizer on; a gRPC Produce or Metadata
        authorized for WRITE or DESCRIBE alone must not create topics)."""
        if not self.authorizer_on:
            return True
        p = current_principal()
        if p is None:
            return False
        allowed = authorizer.allowed_for(self.acls(), p.principal, p.host,
                                         p.principal in self.super_users or is_broker(p, self.broker_principals))
        return allowed(CLUSTER, CLUSTER_NAME, CREATE) or allowed(TOPIC, name, CREATE)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, security: BrokerSecurity) -> None:
        self.s = security

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        broker_only = self.s.brokers_only and method.startswith(BROKER_ONLY_PREFIXES)

        async def gate(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Callable[[Any], None] | None:
            found = await self._gate(method, broker_only, context)
            return await self._authorize(method, request, found, context) if self.s.authorizer_on else None

        return _gated_handler(handler, gate)

    async def _authorize(self, method: str, request: Any, found: Principal,
                         context: grpc.aio.ServicerContext[Any, Any]) -> Callable[[Any], None] | None:
        """Refuses the call when the principal lacks what `authorizer.RULES[method]` requires;
        else returns the answer's trim (listing calls) or None."""
        s = self.s
        broker = is_broker(found, s.broker_principals)
        rule = authorizer.rule(method)
        if rule.broker_only and not broker:
            message = (f"CLUSTER_AUTHORIZATION_FAILED: {found.principal} (host {found.host or 'unknown'}) is not "
                       f"allowed {method}: brokers only")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, message,
                                ((ERROR_CODE_TRAILER, "CLUSTER_AUTHORIZATION_FAILED"),))
        allowed = authorizer.allowed_for(s.acls(), found.principal, found.host,
                                         broker or found.principal in s.super_users)
        refused = authorizer.refusal(method, request, found.principal, found.host, allowed)
        if refused is not None:
            log.info("refused %s", refused.message)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused.message,
                                ((ERROR_CODE_TRAILER, refused.code),))
        trim = rule.trim
        if trim is None:
            return None
        return lambda response: trim(request, response, allowed)

    async def _gate(self, method: str, broker_only: bool, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        auth = self.s.authenticator
        found = auth.identify(context.auth_context(), tuple(context.invocation_metadata() or ()), context.peer())
        if isinstance(found, PasswordCheck):
            found = await asyncio.get_running_loop().run_in_executor(None, auth.check_password, found)
        if isinstance(found, AuthFailure):
            log.info("refused %s from %s: %s", method, context.peer(), found.message)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, found.message)
            raise AssertionError("abort returned")  # context.abort raises
        if self.s.required and not found.authenticated:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        if broker_only and not is_broker(found, self.s.broker_principals):
            log.info("refused broker-only %s to %s from %s", method, found.principal, found.host)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{method} is for brokers only; {found.principal} is not a broker principal")
        _current.set(found)
        return found


Gate = Callable[[Any, Any], Awaitable[Callable[[Any], None] | None]]  # (request, context) -> answer trim


def _gated_handler(handler: grpc.RpcMethodHandler[Any, Any], gate: Gate) -> grpc.RpcMethodHandler[Any, Any]:
    def gated(behavior: Callable[..., Any], unary_request: bool) -> Callable[..., Any]:
        # grpc.aio drives a handler by its kind (async generator or coroutine): keep the kind.
        if inspect.isasyncgenfunction(behavior):
            async def agen(request: Any, context: Any) -> AsyncIterator[Any]:
                await gate(request if unary_request else None, context)
                inner = behavior(request, context)
                try:
                    async for item in inner:
                        yield item
                finally:
                    await inner.aclose()
            return agen

        async def coro(request: Any, context: Any) -> Any:
            trim = await gate(request if unary_request else None, context)
            result = behavior(request, context)
            if inspect.isawaitable(result):
                result = await result
            if trim is not None and result is not None:
                trim(result)
            return result
        return coro

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(gated(handler.unary_unary, True), handler.request_deserializer,
                                                   handler.response_serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(gated(handler.unary_stream, True), handler.request_deserializer,
                                                    handler.response_serializer)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(gated(handler.stream_unary, False), handler.request_deserializer,
                                                    handler.response_serializer)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(gated(handler.stream_stream, False), handler.request_deserializer,
                                                     handler.response_serializer)
    return handler
