"""Kafka Produce in one process over a real ReplicaManager (the in-process broker of
test_broker_service_inprocess.py): a producer id this broker's metadata image has not caught up
on waits for the image, as gRPC Produce does (`server.image_with_producer_ids`), and requests
pipelined behind the waiting one append after it, in arrival order."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import time

from kafka.record.memory_records import MemoryRecordsBuilder
from kio.schema.errors import ErrorCode as K
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.static.primitive import i16, i32
from semel import limits
from semel.cluster.kafka import codec
from semel.cluster.kafka.handlers import KafkaApis

from tests.cluster.test_broker_service_inprocess import FakeBroker, image

PID = 1500  # above the image's next_producer_id (1000) until the test lets the image catch up


class CatchingUpBroker(FakeBroker):
    """The in-process broker with `Broker.wait_for_metadata`'s contract: woken by every new image."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.changed = asyncio.Event()

    def set_image(self, img) -> None:  # noqa: ANN001
        super().set_image(img)
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_for_metadata(self, predicate, timeout_s: float) -> bool:  # noqa: ANN001
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not predicate(self.quorum.image()):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                return False
        return True


def _batch(producer_id: int, base_sequence: int, count: int = 2) -> bytes:
    b = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 20, producer_id=producer_id,
                             producer_epoch=0, base_sequence=base_sequence)
    for i in range(count):
        b.append(timestamp=int(time.time() * 1000), key=None, value=b"v%d" % (base_sequence + i), headers=[])
    b.close()
    return bytes(b.buffer())


def _request(records: bytes) -> codec.Request:
    body = ProduceRequest(transactional_id=None, acks=i16(1), timeout=datetime.timedelta(seconds=10),
                          topic_data=(TopicProduceData(name="t", partition_data=(
                              PartitionProduceData(index=i32(0), records=records),)),))
    return codec.Request(api_key=codec.PRODUCE, api_version=9, correlation_id=1, client_id=None, body=body)


def _answer(values: dict) -> tuple[K, int]:
    (r,) = values["responses"][0]["partition_responses"]
    return r["error_code"], r["base_offset"]


def test_a_producer_id_the_image_catches_up_on_is_accepted_and_pipelined_requests_keep_their_order(tmp_path):
    async def run() -> None:
        broker = CatchingUpBroker(tmp_path, image(isr=(1,)))
        try:
            apis = KafkaApis(broker)  # type: ignore[arg-type]
            first = asyncio.create_task(apis.produce(_request(_batch(PID, 0))))
            second = asyncio.create_task(apis.produce(_request(_batch(PID, 2))))
            await asyncio.sleep(0)  # both started: waiting for the image
            assert not first.done() and not second.done()
            broker.set_image(dataclasses.replace(image(isr=(1,)), next_producer_id=2000))
            # arrives after the image caught up but before the waiting ones resumed: queues behind them
            third = asyncio.create_task(apis.produce(_request(_batch(PID, 4))))
            answers = [_answer(v) for v in await asyncio.gather(first, second, third)]
            assert answers == [(K.none, 0), (K.none, 2), (K.none, 4)]
            assert apis._pid_gate is None  # nothing left queued
        finally:
            broker.close()

    asyncio.run(run())


def test_a_producer_id_never_allocated_is_refused_after_the_bounded_wait(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_PRODUCER_ID_METADATA_WAIT_MS", 50)

    async def run() -> None:
        broker = CatchingUpBroker(tmp_path, image(isr=(1,)))
        try:
            apis = KafkaApis(broker)  # type: ignore[arg-type]
            code, offset = _answer(await apis.produce(_request(_batch(PID, 0))))  # type: ignore[arg-type]
            assert (code, offset) == (K.invalid_producer_id_mapping, -1)
            # an id the image knows goes through at once, and nothing is left queued
            code, offset = _answer(await apis.produce(_request(_batch(500, 0))))  # type: ignore[arg-type]
            assert (code, offset) == (K.none, 0)
            assert apis._pid_gate is None
        finally:
            broker.close()

    asyncio.run(run())
