"""Measure ACL checks per second with `acl.MAX_ACLS` bindings: the reference scan
(`acl.authorize` / `authorize_any` over every binding) against the broker's path
(`authorizer.allowed_for`: `acl.authorize` over the `AclIndex` candidates), in one run, rounds
taking turns so the ratio holds on a busy machine. Pure CPU, no broker.

    .venv/bin/python tests/cluster/measure_acl_checks.py [ROUNDS]

The ACL set: 1000 users, each with 10 bindings (MAX_ACLS = 10000 in all): WRITE and READ on
two literal topics of their own, READ on a prefix of their own, DESCRIBE on a prefixed
transactional id, READ on a group, a DENY on one literal topic, IDEMPOTENT_WRITE on the
cluster (every tenth user) or WRITE on a shared prefix, and ALLOW DESCRIBE for `User:*` on
topics `public-*` (literal). The checks, a fixed random mix: a user's WRITE / READ on its own
topic (allowed), READ on a topic under its prefix (allowed), WRITE on another user's topic
(denied after looking at everything applicable), the DENY'd topic, and InitProducerId's
"WRITE on any topic or IDEMPOTENT_WRITE". Prints checks/s per mode (median of the rounds), the
index build time, and one JSON object on the last line.

A second set, "prefixed": 100 users with 100 PREFIXED topic bindings each (`team-U-P-`), checks
on topics under one of them: what the prefix-length index is for (an index that hands every
PREFIXED binding of the caller to `authorize` reads 100 per check there).
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from semel.cluster.broker import authorizer  # noqa: E402
from semel.cluster.metadata import acl  # noqa: E402
from semel.cluster.metadata.acl import AclBinding, AclIndex  # noqa: E402

USERS = 1000
CHECKS_PER_ROUND = 2000
SEED = 20261207


def acl_set() -> tuple[AclBinding, ...]:
    out: list[AclBinding] = []
    for u in range(USERS):
        p = f"User:u{u}"
        out += [
            AclBinding(p, "*", acl.WRITE, acl.ALLOW, acl.TOPIC, f"t{u}-a"),
            AclBinding(p, "*", acl.READ, acl.ALLOW, acl.TOPIC, f"t{u}-a"),
            AclBinding(p, "*", acl.WRITE, acl.ALLOW, acl.TOPIC, f"t{u}-b"),
            AclBinding(p, "*", acl.READ, acl.ALLOW, acl.TOPIC, f"t{u}-b"),
            AclBinding(p, "*", acl.READ, acl.ALLOW, acl.TOPIC, f"logs-{u}-", acl.PREFIXED),
            AclBinding(p, "*", acl.DESCRIBE, acl.ALLOW, acl.TRANSACTIONAL_ID, f"tx-{u}-", acl.PREFIXED),
            AclBinding(p, "*", acl.READ, acl.ALLOW, acl.GROUP, f"g{u}"),
            AclBinding(p, "*", acl.WRITE, acl.DENY, acl.TOPIC, f"t{u}-secret"),
            AclBinding(p, "*", acl.IDEMPOTENT_WRITE, acl.ALLOW, acl.CLUSTER, acl.CLUSTER_NAME) if u % 10 == 0 else
            AclBinding(p, "*", acl.WRITE, acl.ALLOW, acl.TOPIC, f"shared-{u % 7}-", acl.PREFIXED),
            AclBinding("User:*", "*", acl.DESCRIBE, acl.ALLOW, acl.TOPIC, f"public-{u}"),
        ]
    assert len(out) == acl.MAX_ACLS, len(out)
    return tuple(out)


def workload(rng: random.Random) -> list[tuple[str, str, str, str]]:
    """(principal, resource type, name, operation), ANY_TOPIC_WRITE for InitProducerId."""
    out = []
    for _ in range(CHECKS_PER_ROUND):
        u = rng.randrange(USERS)
        other = (u + 1 + rng.randrange(USERS - 1)) % USERS
        out.append(rng.choice([
            (f"User:u{u}", acl.TOPIC, f"t{u}-a", acl.WRITE),
            (f"User:u{u}", acl.TOPIC, f"t{u}-b", acl.READ),
            (f"User:u{u}", acl.TOPIC, f"logs-{u}-2026-12", acl.READ),
            (f"User:u{u}", acl.TOPIC, f"t{other}-a", acl.WRITE),
            (f"User:u{u}", acl.TOPIC, f"t{u}-secret", acl.WRITE),
            (f"User:u{u}", acl.GROUP, f"g{u}", acl.READ),
            (f"User:u{u}", acl.TOPIC, "", authorizer.ANY_TOPIC_WRITE),
        ]))
    return out


def scan(acls: tuple[AclBinding, ...], principal: str, host: str) -> Callable[[str, str, str], bool]:
    """The reference: every binding, every check."""
    def allowed(resource_type: str, name: str, operation: str) -> bool:
        if operation == authorizer.ANY_TOPIC_WRITE:
            return acl.authorize_any(acls, principal, host, acl.WRITE, acl.TOPIC)
        return acl.authorize(acls, principal, host, operation, resource_type, name)
    return allowed


def prefixed_set() -> tuple[tuple[AclBinding, ...], list[tuple[str, str, str, str]]]:
    acls = tuple(AclBinding(f"User:p{u}", "*", acl.READ, acl.ALLOW, acl.TOPIC, f"team-{u}-{j}-", acl.PREFIXED)
                 for u in range(100) for j in range(100))
    assert len(acls) == acl.MAX_ACLS
    rng = random.Random(SEED)
    checks = []
    for _ in range(CHECKS_PER_ROUND):
        u, j = rng.randrange(100), rng.randrange(100)
        checks.append((f"User:p{u}", acl.TOPIC, f"team-{u}-{j}-events", acl.READ))
    return acls, checks


def run(check: Callable[..., Callable[[str, str, str], bool]], acls: tuple[AclBinding, ...],
        checks: list[tuple[str, str, str, str]]) -> tuple[float, int]:
    allowed = 0
    start = time.perf_counter()
    for principal, resource_type, name, operation in checks:
        allowed += check(acls, principal, "10.0.0.1")(resource_type, name, operation)
    return len(checks) / (time.perf_counter() - start), allowed


def by_index(acls: tuple[AclBinding, ...], principal: str, host: str) -> Callable[[str, str, str], bool]:
    return authorizer.allowed_for(acls, principal, host, False)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    sets = {"mixed": (acl_set(), workload(random.Random(SEED))), "prefixed": prefixed_set()}
    out: dict[str, float] = {}
    for label, (acls, checks) in sets.items():
        started = time.perf_counter()
        AclIndex(acls)
        build_ms = (time.perf_counter() - started) * 1000
        rates: dict[str, list[float]] = {"scan": [], "index": []}
        for _ in range(rounds):
            scan_rate, scan_allowed = run(scan, acls, checks)
            index_rate, index_allowed = run(by_index, acls, checks)
            assert scan_allowed == index_allowed, (scan_allowed, index_allowed)  # the same answers
            rates["scan"].append(scan_rate)
            rates["index"].append(index_rate)
        medians = {mode: statistics.median(r) for mode, r in rates.items()}
        print(f"{label}: {len(acls)} bindings, {len(checks)} checks per round, {rounds} rounds (seed {SEED}), "
              f"{scan_allowed} allowed")
        print(f"  scan:  {medians['scan']:>12,.0f} checks/s")
        print(f"  index: {medians['index']:>12,.0f} checks/s  ({medians['index'] / medians['scan']:.0f}x)")
        print(f"  index build: {build_ms:.1f} ms (once per ACL change)")
        out |= {f"{label}_checks_per_s_scan": round(medians["scan"]), f"{label}_checks_per_s_index":
                round(medians["index"]), f"{label}_index_build_ms": round(build_ms, 1)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
