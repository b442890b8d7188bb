"""`PduConnection` cuts the byte stream into PDUs, whatever sizes the socket reads come in.

The reads are driven here by hand (`get_buffer`, then `buffer_updated`, as the event loop does)
so that every split of the stream can be tried; the receiver tests send through real sockets.
"""

import asyncio
import itertools
import struct
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.errors import ProtocolViolation
from ingest.pdu import PduConnection

_PATTERN = bytes(range(256)) * 1300  # bodies are slices of it, each starting elsewhere


class RecordingTransport(asyncio.Transport):
    """What the connection asks of its transport, recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def connected(max_length: int) -> tuple[PduConnection, RecordingTransport]:
    connection = PduConnection(max_length=max_length)
    transport = RecordingTransport()
    connection.connection_made(transport)
    return connection, transport


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BxI", pdu_type, len(body)) + body


def feed(connection: PduConnection, data: bytes, read_sizes: Iterable[int]) -> None:
    """Hand `data` to the connection as reads of (at most) the given sizes."""
    sizes = itertools.cycle(read_sizes)
    position = 0
    while position < len(data):
        buffer = connection.get_buffer(-1)
        count = min(len(buffer), next(sizes), len(data) - position)
        buffer[:count] = data[position : position + count]
        connection.buffer_updated(count)
        position += count


def read(connection: PduConnection, count: int, *, max_length: int) -> list[tuple[int, bytes]]:
    async def take() -> list[tuple[int, bytes]]:
        pdus = []
        for _ in range(count):
            pdu_type, body = await connection.read_pdu(max_length=max_length)
            pdus.append((pdu_type, bytes(body)))
        return pdus

    return asyncio.run(take())


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(
        st.sampled_from([0, 1, 6, 65_529, 65_530, 65_531, 70_000, 262_144]) | st.integers(0, 3000),
        min_size=1,
        max_size=6,
    ),
    read_sizes=st.lists(st.integers(1, 200_000), min_size=1, max_size=5),
)
def test_pdus_arrive_whole_and_in_order_however_the_reads_split_them(
    lengths: list[int], read_sizes: list[int]
) -> None:
    sent = [(n % 7 + 1, _PATTERN[n : n + length]) for n, length in enumerate(lengths)]
    connection, _ = connected(max_length=262_144)

    feed(connection, b"".join(pdu(*item) for item in sent), read_sizes)

    assert read(connection, len(sent), max_length=262_144) == sent


def test_a_pdu_over_the_limit_ends_reading_after_the_pdus_before_it() -> None:
    connection, transport = connected(max_length=1000)

    feed(connection, pdu(4, b"a" * 500) + pdu(4, b"b" * 5000), [100_000])

    assert read(connection, 1, max_length=1000) == [(4, b"a" * 500)]
    with pytest.raises(ProtocolViolation, match="5000 bytes exceeds our limit of 1000"):
        read(connection, 1, max_length=1000)
    assert not transport.reading


def test_each_read_may_set_a_lower_limit() -> None:
    connection, _ = connected(max_length=65_536)

    feed(connection, pdu(4, bytes(5000)), [100_000])

    with pytest.raises(ProtocolViolation, match="5000 bytes exceeds our limit of 4096"):
        read(connection, 1, max_length=4096)


def test_reading_pauses_while_pdus_wait_and_resumes_once_they_are_taken() -> None:
    connection, transport = connected(max_length=1000)

    feed(connection, pdu(4, bytes(800)) * 3, [100_000])
    assert not transport.reading  # 2400 bytes wait, more than twice the largest PDU

    read(connection, 1, max_length=1000)
    assert not transport.reading  # 1600
    read(connection, 1, max_length=1000)
    assert transport.reading  # 800


def test_the_peer_closing_ends_reading_once_the_complete_pdus_are_taken() -> None:
    connection, _ = connected(max_length=100_000)

    feed(connection, pdu(5, bytes(4)) + pdu(4, bytes(90_000))[:50_000], [30_000])
    connection.eof_received()

    assert read(connection, 1, max_length=100_000) == [(5, bytes(4))]
    with pytest.raises(ConnectionResetError, match="closed the connection"):
        read(connection, 1, max_length=100_000)
