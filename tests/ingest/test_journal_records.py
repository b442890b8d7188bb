"""The intake journal's file format: what a crash mid-write leaves behind is told apart."""

from infra.catalogue import InstanceRejected
from infra.events import Envelope, encode
from ingest.outbox import encode_record, read_records


def rejected(number: int) -> Envelope:
    payload = InstanceRejected(
        status=0xC210,
        reason=f"case {number}",
        calling_aet="SCANNER",
        called_aet="TALARIA",
        peer_address="127.0.0.1",
        peer_port=104,
    )
    return Envelope(payload=payload, source="test", subject="SCANNER")


def test_complete_records_come_back_and_a_torn_tail_is_ignored() -> None:
    records = [encode_record(encode(rejected(n))[1]) for n in range(3)]
    journal = b"".join(records)

    whole = read_records(journal)
    torn = read_records(journal[:-5])
    scribbled = read_records(journal[:-5] + b"xxxxx")

    assert [end for _value, end in whole] == [
        len(records[0]),
        len(records[0]) + len(records[1]),
        len(journal),
    ]
    assert b'"reason":"case 2"' in whole[2][0]
    assert len(torn) == 2
    assert len(scribbled) == 2  # the checksum catches a tail that was never synced
