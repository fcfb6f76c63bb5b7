"""Fuzzing the Kafka listener's input handling (hypothesis): whatever bytes arrive, the decoder
and the produce-batch checks either accept or refuse with their own error, and a connection fed
random frames ends closed, never with an exception escaping or a hang."""

from __future__ import annotations

import asyncio
import io
import struct

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kio.schema.errors import ErrorCode as K
from kio.serial import entity_reader, entity_writer
from semel.cluster.kafka import codec
from semel.cluster.kafka.handlers import ProduceRefused, checked_produce_batch
from semel.cluster.kafka.listener import Connection

# frames that start like a real request (a served key and version) reach kio's decoders
_served = st.sampled_from(sorted((k, v) for k, (lo, hi) in codec.SERVED.items() for v in range(lo, hi + 1)))


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    key, version = draw(_served) if draw(st.booleans()) else (draw(st.integers(-5, 100)), draw(st.integers(-2, 20)))
    return struct.pack(">hhi", key, version, draw(st.integers(-(2**31), 2**31 - 1))) + draw(st.binary(max_size=200))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames())
@example(struct.pack(">hhi", 9999, 0, 1) + b"\x00\x00")           # an unknown API key
@example(struct.pack(">hhi", codec.METADATA, 99, 1) + b"\x00\x00")  # a version out of range
@example(struct.pack(">hhi", codec.PRODUCE, 2, 1) + b"\x00\x00")    # below the served range
def test_decoding_any_frame_answers_a_request_or_bad_request(frame: bytes) -> None:
    try:
        request = codec.decode_request(frame)
    except codec.BadRequest:
        return
    assert codec.is_served(request.api_key, request.api_version)
    # what was accepted is a well-formed entity: it encodes and decodes back to itself
    out = io.BytesIO()
    entity_writer(type(request.body))(out, request.body)
    again, used = entity_reader(type(request.body))(out.getvalue(), 0)
    assert (again, used) == (request.body, out.tell())


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=0, max_size=300), st.integers(3, 9))
def test_any_produce_records_are_accepted_or_refused_with_a_kafka_error(records: bytes, version: int) -> None:
    try:
        checked_produce_batch(records, version, 1 << 20, 1_700_000_000_000)
    except ProduceRefused:
        pass


def _client_batch() -> bytes:
    from kafka.record.memory_records import MemoryRecordsBuilder

    b = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 20)
    for i in range(3):
        b.append(timestamp=1_700_000_000_000, key=b"k", value=b"v%d" % i, headers=[])
    b.close()
    return bytes(b.buffer())


_MAGIC_POSITION = 16  # magic, CRC and everything the CRC covers come after


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_client_batch_with_any_byte_changed_after_the_epoch_is_refused(data: st.DataObject) -> None:
    """A bad CRC (or magic) gets the protocol's error: a valid batch with one byte changed
    anywhere from the magic on is refused, never stored."""
    batch = bytearray(_client_batch())
    checked_produce_batch(bytes(batch), 9, 1 << 20, 1_700_000_000_000)  # the original is accepted
    position = data.draw(st.integers(_MAGIC_POSITION, len(batch) - 1))
    batch[position] ^= data.draw(st.integers(1, 255))
    try:
        checked_produce_batch(bytes(batch), 9, 1 << 20, 1_700_000_000_000)
    except ProduceRefused as exc:
        assert exc.code in (K.corrupt_message, K.invalid_record, K.unsupported_for_message_format), exc.code
    else:
        raise AssertionError(f"a batch with byte {position} changed was accepted")


class _Apis:
    """Answers every request it gets with nothing (acks=0 style): the test is about framing."""

    async def handle(self, request: codec.Request) -> None:
        return None


class _Writer:
    def __init__(self) -> None:
        self.closed = False
        self.transport = self
        self.written = b""

    def get_extra_info(self, name: str) -> str:
        return "fuzz"

    def write(self, data: bytes) -> None:
        self.written += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        pass


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(frames().map(lambda f: struct.pack(">i", len(f)) + f), st.binary(max_size=40)),
                max_size=6))
@example([b"\x7f\xff\xff\xff" + b"x" * 40])  # a 2 GiB size prefix: closed before anything is allocated
@example([b"\xff\xff\xff\xfe" + b"x" * 40])  # a negative one
@example([struct.pack(">i", 10) + struct.pack(">hhi", 9999, 0, 7) + b"\x00\x00"])  # an unknown API key
def test_a_connection_fed_any_bytes_ends_closed(chunks: list[bytes]) -> None:
    async def run() -> _Writer:
        reader = asyncio.StreamReader()
        reader.feed_data(b"".join(chunks))
        reader.feed_eof()
        writer = _Writer()
        await asyncio.wait_for(Connection(_Apis(), reader, writer).run(), 10)  # type: ignore[arg-type]
        return writer

    writer = asyncio.run(run())
    assert writer.closed
    # only ApiVersions beyond the served range is answered here (the v0 error), nothing else
    assert len(writer.written) == 0 or writer.written[8:10] == b"\x00\x23"


class _CountingApis:
    def __init__(self) -> None:
        self.calls = 0

    async def handle(self, request: codec.Request) -> None:
        assert request.principal is not None and not request.principal.authenticated
        if request.api_key != codec.API_VERSIONS:
            self.calls += 1
        return None


def _sasl_frame(key: int, version: int, payload: bytes) -> bytes:
    header = struct.pack(">hhih", key, version, 7, 4) + b"fuzz"
    if key == codec.SASL_AUTHENTICATE and version == 2:  # flexible: compact bytes, tagged fields
        header += b"\x00"
        body = bytes([len(payload) + 1]) + payload + b"\x00" if len(payload) < 127 else payload
    else:
        body = (struct.pack(">h", len(payload)) if key == codec.SASL_HANDSHAKE else struct.pack(">i", len(payload))) \
            + payload
    frame = header + body
    return struct.pack(">i", len(frame)) + frame


def _plain_frame(key: int, version: int, body: bytes) -> bytes:
    frame = struct.pack(">hhih", key, version, 9, 4) + b"fuzz" + body
    return struct.pack(">i", len(frame)) + frame


# well-formed requests that a handler would answer: Metadata v1 (all topics), ListGroups v0,
# ApiVersions v0 (the one a handler may see before authentication)
_valid_frames = st.sampled_from([_plain_frame(codec.METADATA, 1, b"\xff\xff\xff\xff"),
                                 _plain_frame(codec.LIST_GROUPS, 0, b""), _plain_frame(codec.API_VERSIONS, 0, b"")])

_sasl_frames = st.builds(
    _sasl_frame, st.sampled_from([codec.SASL_HANDSHAKE, codec.SASL_AUTHENTICATE]), st.integers(0, 2),
    st.one_of(st.sampled_from([b"SCRAM-SHA-256", b"SCRAM-SHA-512", b"PLAIN", b"n,,n=alice,r=abc",
                               b"c=biws,r=abc,p=AAAA", b"\0alice\0pw"]), st.binary(max_size=60)))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_sasl_frames, _valid_frames, frames().map(lambda f: struct.pack(">i", len(f)) + f),
                          st.binary(max_size=40)), max_size=8))
def test_a_connection_that_must_authenticate_never_reaches_a_handler(chunks: list[bytes]) -> None:
    """--authentication required: whatever SASL and other frames arrive, no request reaches the
    APIs (only ApiVersions, SaslHandshake and SaslAuthenticate are served before SASL succeeds,
    and no random bytes prove a password), and the connection ends closed."""
    from semel import scram, tls
    from semel.cluster.broker.security import BrokerSecurity

    users = {"alice": (scram.make_credential("pencil", iterations=4096),)}
    security = BrokerSecurity(1, tls.TlsFiles(), "none", "required", (), b"raft-secret",
                              lambda name: users.get(name, ()))

    async def run() -> tuple[_Writer, _CountingApis]:
        reader = asyncio.StreamReader()
        reader.feed_data(b"".join(chunks))
        reader.feed_eof()
        writer, apis = _Writer(), _CountingApis()
        await asyncio.wait_for(Connection(apis, reader, writer, security).run(), 10)  # type: ignore[arg-type]
        return writer, apis

    writer, apis = asyncio.run(run())
    assert writer.closed
    assert apis.calls == 0, "a request other than ApiVersions reached the APIs before authentication"


def test_a_connection_that_never_authenticates_is_closed_at_its_deadline() -> None:
    """--authentication required: a client that connects and sends nothing (or only
    ApiVersions) is closed after the authentication timeout instead of holding a slot."""
    from semel import scram, tls
    from semel.cluster.broker.security import BrokerSecurity

    security = BrokerSecurity(1, tls.TlsFiles(), "none", "required", (), b"raft-secret",
                              lambda name: () if name else (scram.make_credential("x", iterations=4096),))

    async def run(data: bytes) -> _Writer:
        reader = asyncio.StreamReader()
        reader.feed_data(data)  # and never EOF: the client just stays connected
        writer = _Writer()
        conn = Connection(_CountingApis(), reader, writer, security, auth_timeout_ms=200)  # type: ignore[arg-type]
        await asyncio.wait_for(conn.run(), 10)
        return writer

    assert asyncio.run(run(b"")).closed
    assert asyncio.run(run(_plain_frame(codec.API_VERSIONS, 0, b""))).closed
