"""Measure what metrics cost on the request path, against prometheus-client's own Counter and
Histogram (which the path counters replaced), in one run so the ratio holds on a busy machine.

    .venv/bin/python tests/cluster/measure_metrics_cost.py [N]

Per produced batch: `BrokerMetrics.produced` (one dict hit, two int additions) vs a labelled
Counter pair. Per unary RPC: the interceptor's wrapper minus the bare coroutine, vs the same
wrapper with a labelled Counter + Histogram. Prints one JSON object on the last line (us).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from semel.cluster.broker.metrics import RPC_LATENCY_BUCKETS_S, BrokerMetrics, RpcMetricsInterceptor


class _Context:
    def code(self) -> None:
        return None


async def _behavior(request: Any, context: Any) -> Any:
    return request


async def _per_call_us(call: Any, n: int) -> float:
    ctx = _Context()
    start = time.perf_counter()
    for i in range(n):
        await call(i, ctx)
    return (time.perf_counter() - start) / n * 1e6


def main(n: int) -> dict[str, float]:
    m = BrokerMetrics()
    start = time.perf_counter()
    for _ in range(n):
        m.produced("topic-a", 1000, 10)
    ours_batch = (time.perf_counter() - start) / n * 1e6

    registry = CollectorRegistry()
    bytes_in = Counter("b", "b", ["topic"], registry=registry)
    records_in = Counter("r", "r", ["topic"], registry=registry)
    b_child, r_child = bytes_in.labels("topic-a"), records_in.labels("topic-a")
    start = time.perf_counter()
    for _ in range(n):
        b_child.inc(1000)
        r_child.inc(10)
    client_batch = (time.perf_counter() - start) / n * 1e6

    requests = Counter("q", "q", ["method", "code"], registry=registry)
    duration = Histogram("d", "d", ["method"], buckets=RPC_LATENCY_BUCKETS_S, registry=registry)
    d_child = duration.labels("/m")

    async def client_wrapped(request: Any, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return await _behavior(request, context)
        finally:
            d_child.observe(time.perf_counter() - started)
            requests.labels("/m", "OK").inc()

    async def calls() -> tuple[float, float, float]:
        ours = RpcMetricsInterceptor(m)._timed("/m", _behavior)
        return (await _per_call_us(ours, n), await _per_call_us(client_wrapped, n),
                await _per_call_us(_behavior, n))

    ours_call, client_call, bare_call = asyncio.run(calls())
    result = {
        "per_batch_us": round(ours_batch, 3), "per_batch_prometheus_client_us": round(client_batch, 3),
        "per_call_us": round(ours_call - bare_call, 3),
        "per_call_prometheus_client_us": round(client_call - bare_call, 3),
    }
    print(f"per produced batch: {result['per_batch_us']} us (prometheus-client Counters: "
          f"{result['per_batch_prometheus_client_us']} us)")
    print(f"per unary call: {result['per_call_us']} us (prometheus-client Counter + Histogram: "
          f"{result['per_call_prometheus_client_us']} us)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
