"""Kafka's ACL model and authorizer, pure (no I/O): the bindings live in the metadata image
(`MetadataImage.acls`, changed by the `CreateAcls` / `DeleteAcls` commands) and every broker
evaluates them the same way (`authorize`).

An ACL: principal P is ALLOW|DENY operation O from host H on resources of one type whose name
matches a pattern (LITERAL name, LITERAL `*` = every name, or PREFIXED) - KIP-11 / KIP-290.
Evaluation is Kafka's StandardAuthorizer's (/work/shared/reference/security.md, section 2):
  1. super users (broker `--super-users`) and broker principals: allowed, no ACL consulted;
  2. an ACL applies when its resource type is the resource's, its pattern matches the name,
     its principal is the caller or `User:*`, its host is the caller's IP or `*`, and its
     operation is the requested one, ALL, or (ALLOW ACLs only) an implying one: READ, WRITE,
     DELETE, ALTER imply DESCRIBE; ALTER_CONFIGS implies DESCRIBE_CONFIGS;
  3. any applicable DENY: denied (DENY wins); else any applicable ALLOW: allowed;
  4. nothing applies: denied (deny by default).
Names are Kafka's upper-case words (the wire codes are not used: the records keep the words).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

TOPIC, GROUP, TRANSACTIONAL_ID, CLUSTER = "TOPIC", "GROUP", "TRANSACTIONAL_ID", "CLUSTER"
RESOURCE_TYPES = (TOPIC, GROUP, TRANSACTIONAL_ID, CLUSTER)
CLUSTER_NAME = "kafka-cluster"  # the cluster resource is a singleton of this name (Kafka's)

LITERAL, PREFIXED = "LITERAL", "PREFIXED"
PATTERN_TYPES = (LITERAL, PREFIXED)
WILDCARD = "*"  # a LITERAL name matching every resource; `User:*` matches every principal

ALLOW, DENY = "ALLOW", "DENY"
PERMISSIONS = (ALLOW, DENY)

READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE = "READ", "WRITE", "CREATE", "DELETE", "ALTER", "DESCRIBE"
CLUSTER_ACTION, DESCRIBE_CONFIGS, ALTER_CONFIGS = "CLUSTER_ACTION", "DESCRIBE_CONFIGS", "ALTER_CONFIGS"
IDEMPOTENT_WRITE, ALL = "IDEMPOTENT_WRITE", "ALL"
OPERATIONS = (READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, CLUSTER_ACTION, DESCRIBE_CONFIGS, ALTER_CONFIGS,
              IDEMPOTENT_WRITE, ALL)
# what an ALLOW of the key also allows (never for DENY: a DENY READ does not deny DESCRIBE)
IMPLIES: dict[str, frozenset[str]] = {
    READ: frozenset({DESCRIBE}), WRITE: frozenset({DESCRIBE}), DELETE: frozenset({DESCRIBE}),
    ALTER: frozenset({DESCRIBE}), ALTER_CONFIGS: frozenset({DESCRIBE_CONFIGS}),
}

MAX_ACLS = 10_000  # bindings in the image (each is a few hundred bytes; every broker holds all)
MAX_ACL_FIELD_CHARS = 255


@dataclasses.dataclass(frozen=True, slots=True)
class AclBinding:
    principal: str  # "User:alice" or "User:*"
    host: str  # an IP or "*"
    operation: str
    permission: str
    resource_type: str
    resource_name: str
    pattern_type: str = LITERAL

    def describe(self) -> str:
        pattern = "" if self.pattern_type == LITERAL else f" ({self.pattern_type.lower()})"
        return (f"{self.principal} {self.permission} {self.operation} on {self.resource_type} "
                f"{self.resource_name!r}{pattern} from {self.host}")


@dataclasses.dataclass(frozen=True, slots=True)
class AclFilter:
    """Selects bindings for listing and deleting; "" in a field matches anything. A filter's
    resource_name with pattern_type "" or the same pattern type matches that name exactly (as
    Kafka's ANY/LITERAL/PREFIXED filters do: they select bindings, they do not evaluate)."""

    principal: str = ""
    host: str = ""
    operation: str = ""
    permission: str = ""
    resource_type: str = ""
    resource_name: str = ""
    pattern_type: str = ""

    def matches(self, b: AclBinding) -> bool:
        return all(want == "" or want == got for want, got in (
            (self.principal, b.principal), (self.host, b.host), (self.operation, b.operation),
            (self.permission, b.permission), (self.resource_type, b.resource_type),
            (self.resource_name, b.resource_name), (self.pattern_type, b.pattern_type)))


def normalized(b: AclBinding) -> AclBinding:
    """Fills the defaults a request may leave empty: host `*`, pattern LITERAL, the cluster's
    name; upper-cases the words."""
    resource_type = b.resource_type.upper()
    return AclBinding(b.principal, b.host or WILDCARD, b.operation.upper(), b.permission.upper(), resource_type,
                      b.resource_name or (CLUSTER_NAME if resource_type == CLUSTER else ""),
                      (b.pattern_type or LITERAL).upper())


def binding_problem(b: AclBinding) -> str:
    """Why `b` cannot be stored ("" when it can)."""
    for name in ("principal", "host", "resource_name"):
        value = getattr(b, name)
        if not isinstance(value, str) or not 1 <= len(value) <= MAX_ACL_FIELD_CHARS or "\x00" in value:
            return f"{name} must be 1..{MAX_ACL_FIELD_CHARS} characters"
    if not b.principal.startswith("User:") or len(b.principal) == len("User:"):
        return f"principal {b.principal!r} is not of the form User:<name> (or User:*)"
    if b.operation not in OPERATIONS:
        return f"operation {b.operation!r} is not one of {', '.join(OPERATIONS)}"
    if b.permission not in PERMISSIONS:
        return f"permission {b.permission!r} is not ALLOW or DENY"
    if b.resource_type not in RESOURCE_TYPES:
        return f"resource type {b.resource_type!r} is not one of {', '.join(RESOURCE_TYPES)}"
    if b.pattern_type not in PATTERN_TYPES:
        return f"pattern type {b.pattern_type!r} is not LITERAL or PREFIXED"
    if b.resource_type == CLUSTER and (b.resource_name != CLUSTER_NAME or b.pattern_type != LITERAL):
        return f"the cluster resource is the literal {CLUSTER_NAME!r}"
    if b.pattern_type == PREFIXED and b.resource_name == WILDCARD:
        return "a prefixed pattern cannot be '*' (use a literal '*')"
    return ""


def filter_problem(f: AclFilter) -> str:
    checks = ((f.operation, OPERATIONS), (f.permission, PERMISSIONS), (f.resource_type, RESOURCE_TYPES),
              (f.pattern_type, PATTERN_TYPES))
    for value, allowed in checks:
        if value and value not in allowed:
            return f"{value!r} is not one of {', '.join(allowed)}"
    for value in (f.principal, f.host, f.resource_name):
        if len(value) > MAX_ACL_FIELD_CHARS:
            return f"a filter field is over {MAX_ACL_FIELD_CHARS} characters"
    return ""


def pattern_matches(b: AclBinding, resource_type: str, name: str) -> bool:
    if b.resource_type != resource_type:
        return False
    if b.pattern_type == PREFIXED:
        return name.startswith(b.resource_name)
    return b.resource_name == WILDCARD or b.resource_name == name


def _operation_applies(b: AclBinding, operation: str) -> bool:
    if b.operation in (operation, ALL):
        return True
    return b.permission == ALLOW and operation in IMPLIES.get(b.operation, frozenset())


def authorize(acls: Iterable[AclBinding], principal: str, host: str, operation: str, resource_type: str,
              name: str, super_user: bool = False) -> bool:
    """May `principal` calling from `host` do `operation` on the resource? (Kafka's rules above;
    `super_user` covers super users and brokers.)"""
    if super_user:
        return True
    allowed = False
    for b in acls:
        if not pattern_matches(b, resource_type, name) or b.principal not in (principal, "User:*"):
            continue
        if b.host not in (host, WILDCARD) or not _operation_applies(b, operation):
            continue
        if b.permission == DENY:
            return False
        allowed = True
    return allowed


def authorize_any(acls: Iterable[AclBinding], principal: str, host: str, operation: str, resource_type: str,
                  super_user: bool = False) -> bool:
    """May the caller do `operation` on *some* resource of the type? (Kafka's
    authorizeByResourceType, KIP-679: an idempotent producer needs WRITE on any topic or
    IDEMPOTENT_WRITE on the cluster.) True when an applicable ALLOW exists whose pattern no
    applicable DENY covers."""
    if super_user:
        return True
    acls = tuple(acls)

    def applies(b: AclBinding) -> bool:
        return (b.resource_type == resource_type and b.principal in (principal, "User:*")
                and b.host in (host, WILDCARD) and _operation_applies(b, operation))

    denies = [d for d in acls if d.permission == DENY and applies(d)]
    for b in acls:
        if b.permission != ALLOW or not applies(b):
            continue
        if not any((d.pattern_type == LITERAL and d.resource_name == WILDCARD)
                   or (d.pattern_type == b.pattern_type and d.resource_name == b.resource_name)
                   or (d.pattern_type == PREFIXED and b.resource_name.startswith(d.resource_name))
                   for d in denies):
            return True
    return False


class AclIndex:
    """One ACL set grouped by resource type and principal, and by name within a group:
    `candidates` hands `authorize` only the bindings that can apply to a caller (its own and
    `User:*`) and a resource (its literal name, the literal `*`, the PREFIXED ones that are a
    prefix of the name), so a check costs the few bindings that can match, not all MAX_ACLS of
    them. PREFIXED patterns are kept by prefix with the sorted set of their lengths: a name's
    matching prefixes are found by slicing it at each length (one dict lookup per distinct
    length, at most MAX_ACL_FIELD_CHARS), not by trying every prefixed binding. The rules stay
    `authorize`'s: the index only leaves out bindings whose type, principal or pattern cannot
    match (`tests/cluster/test_acl_index.py` compares it with the scan over random sets)."""

    __slots__ = ("acls", "_by", "_literal", "_prefixed", "_prefix_lengths")

    def __init__(self, acls: tuple[AclBinding, ...]) -> None:
        self.acls = acls
        by: dict[tuple[str, str], list[AclBinding]] = {}
        literal: dict[tuple[str, str, str], list[AclBinding]] = {}
        prefixed: dict[tuple[str, str, str], list[AclBinding]] = {}
        lengths: dict[tuple[str, str], set[int]] = {}
        for b in acls:
            by.setdefault((b.resource_type, b.principal), []).append(b)
            if b.pattern_type == LITERAL:
                literal.setdefault((b.resource_type, b.principal, b.resource_name), []).append(b)
            else:
                prefixed.setdefault((b.resource_type, b.principal, b.resource_name), []).append(b)
                lengths.setdefault((b.resource_type, b.principal), set()).add(len(b.resource_name))
        self._by = {key: tuple(v) for key, v in by.items()}
        self._literal = {key: tuple(v) for key, v in literal.items()}
        self._prefixed = {key: tuple(v) for key, v in prefixed.items()}
        self._prefix_lengths = {key: tuple(sorted(v)) for key, v in lengths.items()}

    def candidates(self, principal: str, resource_type: str, name: str | None = None) -> tuple[AclBinding, ...]:
        """The bindings that may apply to `principal` on resources of the type (on the one
        named `name`, when given)."""
        out: tuple[AclBinding, ...] = ()
        for who in (principal, "User:*") if principal != "User:*" else (principal,):
            if name is None:
                out += self._by.get((resource_type, who), ())
                continue
            out += self._literal.get((resource_type, who, name), ())
            if name != WILDCARD:
                out += self._literal.get((resource_type, who, WILDCARD), ())
            for length in self._prefix_lengths.get((resource_type, who), ()):
                if length > len(name):
                    break
                out += self._prefixed.get((resource_type, who, name[:length]), ())
        return out


_last_index: AclIndex | None = None


def index_of(acls: Sequence[AclBinding]) -> AclIndex:
    """The index of `acls`; the last one is kept while the same tuple (the metadata image's,
    which is replaced, never changed, when the ACLs change) is asked again."""
    global _last_index
    last = _last_index
    if last is not None and last.acls is acls:
        return last
    index = AclIndex(tuple(acls))
    if isinstance(acls, tuple):
        _last_index = index
    return index


__all__ = [
    "ALL", "ALLOW", "ALTER", "ALTER_CONFIGS", "AclBinding", "AclFilter", "AclIndex", "CLUSTER", "CLUSTER_ACTION", "CLUSTER_NAME",
    "CREATE", "DELETE", "DENY", "DESCRIBE", "DESCRIBE_CONFIGS", "GROUP", "IDEMPOTENT_WRITE", "LITERAL", "MAX_ACLS",
    "OPERATIONS", "PATTERN_TYPES", "PERMISSIONS", "PREFIXED", "READ", "RESOURCE_TYPES", "TOPIC", "TRANSACTIONAL_ID",
    "WILDCARD", "WRITE", "authorize", "authorize_any", "binding_problem", "index_of", "normalized", "filter_problem", "pattern_matches",
]
