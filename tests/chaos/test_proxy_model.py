"""Pure parts of the fault proxy: request validation and per-chunk toxic logic (no sockets)."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from semel.chaos.proxy_link import LimitDataStage, LinkClosed, SlicerStage
from semel.chaos.proxy_model import (
    Address,
    ApiError,
    ProxySpec,
    Stream,
    ToxicSpec,
    parse_address,
    parse_new_proxy,
    parse_new_toxic,
    parse_populate,
    parse_proxy_update,
    parse_toxic_update,
)


def test_parse_address_forms():
    assert parse_address("127.0.0.1:0", "listen") == Address("127.0.0.1", 0)
    assert parse_address("[::1]:8474", "listen") == Address("::1", 8474)
    assert parse_address(":9000", "listen") == Address("", 9000)
    assert str(Address("::1", 5)) == "[::1]:5"
    for bad in ("localhost", "host:", "host:http", "h:70000"):
        with pytest.raises(ApiError) as err:
            parse_address(bad, "upstream")
        assert err.value.status == 400


def test_new_proxy_defaults():
    spec = parse_new_proxy({"name": "p", "upstream": "127.0.0.1:1"})
    assert spec == ProxySpec(name="p", listen="127.0.0.1:0", upstream="127.0.0.1:1", enabled=True)


def test_proxy_update_keeps_absent_fields():
    current = ProxySpec(name="p", listen="127.0.0.1:5", upstream="127.0.0.1:1", enabled=True)
    assert parse_proxy_update({"enabled": False}, current) == ProxySpec("p", "127.0.0.1:5", "127.0.0.1:1", False)
    assert parse_proxy_update({}, current) == current
    with pytest.raises(ApiError):
        parse_proxy_update({"listen": 5}, current)


def test_populate_rejects_duplicates_and_names_the_bad_entry():
    with pytest.raises(ApiError, match="duplicate proxy name"):
        parse_populate([{"name": "a", "upstream": "h:1"}, {"name": "a", "upstream": "h:2"}])
    with pytest.raises(ApiError, match="missing required field: name at proxy 2"):
        parse_populate([{"name": "a", "upstream": "h:1"}, {"upstream": "h:2"}])


def test_new_toxic_defaults_follow_upstream():
    spec = parse_new_toxic({"type": "bandwidth"}, set())
    assert spec == ToxicSpec(name="bandwidth_downstream", type="bandwidth", stream=Stream.DOWNSTREAM,
                             toxicity=1.0, attributes={"rate": 0})
    spec = parse_new_toxic({"type": "latency", "stream": "UPSTREAM", "attributes": {"extra": 1}}, set())
    assert spec.stream is Stream.UPSTREAM and spec.attributes == {"latency": 0, "jitter": 0}


@pytest.mark.parametrize("body, status", [
    ({"type": "latency", "stream": "both"}, 400),
    ({"type": "corrupt"}, 400),
    ({"type": "latency", "name": "taken"}, 409),
    ({"type": "latency", "toxicity": True}, 400),
    ({"type": "latency", "toxicity": -0.1}, 400),
    ({"type": "limit_data", "attributes": {"bytes": 1.5}}, 400),
    ({"type": "slicer", "attributes": {"average_size": 10, "size_variation": 10}}, 400),
    ({"type": "latency", "attributes": []}, 400),
])
def test_new_toxic_errors(body, status):
    with pytest.raises(ApiError) as err:
        parse_new_toxic(body, {"taken"})
    assert err.value.status == status


def test_toxic_update_merges_and_keeps_identity():
    current = parse_new_toxic({"type": "slicer", "name": "s", "stream": "upstream",
                               "attributes": {"average_size": 10, "size_variation": 2, "delay": 5}}, set())
    updated = parse_toxic_update({"type": "latency", "attributes": {"delay": 7}}, current)
    assert updated.type == "slicer" and updated.stream is Stream.UPSTREAM and updated.toxicity == 1.0
    assert updated.attributes == {"average_size": 10, "size_variation": 2, "delay": 7}
    assert current.attributes["delay"] == 5        # the old spec is untouched


# --- per-chunk toxic logic, driven through a fake link ----------------------------------------


class FakeLink:
    """Just what a stage touches: an rng, a loop and an instant wait."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.loop = asyncio.new_event_loop()

    async def wait_until(self, deadline: float, stage: object) -> bool:
        return True


def run_stage(stage, chunks: list[bytes]) -> tuple[list[bytes], bool]:
    out: list[bytes] = []

    async def emit(data: bytes, ts: float) -> None:
        out.append(data)

    async def drive() -> bool:
        try:
            for chunk in chunks:
                await stage.pipe(chunk, 0.0, emit)
        except LinkClosed:
            return True
        return False

    closed = stage.link.loop.run_until_complete(drive())
    stage.link.loop.close()
    return out, closed


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(0, 5000),
       average=st.integers(1, 300), variation_pct=st.integers(0, 99))
def test_slicer_keeps_every_byte_and_bounds_slice_sizes(seed, size, average, variation_pct):
    variation = average * variation_pct // 100
    spec = ToxicSpec("s", "slicer", Stream.DOWNSTREAM, 1.0,
                     {"average_size": average, "size_variation": variation, "delay": 0})
    data = random.Random(seed).randbytes(size)
    slices, closed = run_stage(SlicerStage(spec, FakeLink(seed), True), [data])
    assert not closed and b"".join(slices) == data
    assert all(len(s) <= average + variation for s in slices)
    assert all(len(s) >= average - variation for s in slices[:-1])


@settings(max_examples=60, deadline=None)
@given(limit=st.integers(0, 3000), sizes=st.lists(st.integers(1, 1000), min_size=1, max_size=8))
def test_limit_data_passes_exactly_the_limit_then_closes(limit, sizes):
    spec = ToxicSpec("l", "limit_data", Stream.DOWNSTREAM, 1.0, {"bytes": limit})
    chunks = [bytes([i % 256]) * n for i, n in enumerate(sizes)]
    out, closed = run_stage(LimitDataStage(spec, FakeLink(0), True), chunks)
    total = sum(sizes)
    assert b"".join(out) == b"".join(chunks)[:limit]
    assert closed == (total >= limit)
