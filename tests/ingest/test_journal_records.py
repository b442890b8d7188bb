"""The intake journal's file format: what a crash mid-write leaves behind is told apart."""

from pathlib import Path

import pytest

from infra.blobstore import FolderBlobStore
from infra.catalogue import InstanceRejected
from infra.events import Envelope, encode
from infra.log import EventProducer
from ingest.outbox import Journal, encode_record, read_records
from ingest.settings import IngestSettings
from tests.ingest.conftest import events


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


@pytest.mark.parametrize(
    "checkpoint",
    [b"%020d\n" % 10**9, b"\x00\x00torn"],
    ids=["past-the-end", "unreadable"],
)
def test_a_checkpoint_the_journal_cannot_have_forwards_it_from_its_start(
    settings: IngestSettings, tmp_path: Path, checkpoint: bytes
) -> None:
    """E.g. a crash between compacting the journal and saving the checkpoint: forwarding
    events again is safe (consumers dedupe on event_id), skipping them is not."""
    folder = tmp_path / "journal"
    folder.mkdir()
    journaled = [rejected(n) for n in range(3)]
    records = b"".join(encode_record(encode(envelope)[1]) for envelope in journaled)
    (folder / "events.journal").write_bytes(records)
    (folder / "forwarded.offset").write_bytes(checkpoint)

    with EventProducer(settings, client_id="test") as producer:
        blobs = FolderBlobStore(tmp_path / "blobs", min_free_bytes=0)
        Journal(folder, producer=producer, blobs=blobs, max_wait_s=30).close()

    found = events(settings, expected=3, kind=InstanceRejected.TYPE)
    assert sorted(e.event_id for e in found) == sorted(e.event_id for e in journaled)
    assert int((folder / "forwarded.offset").read_bytes()) == len(records)
