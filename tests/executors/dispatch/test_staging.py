"""Describing a staged instance: the identity targets need, read from the header alone."""

import hashlib
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from executors.dispatch import TargetRefused
from executors.dispatch.staging import describe, stage
from infra.blobstore import BlobNotFound, FolderBlobStore, instance_key
from infra.catalogue import BlobReference
from tests.ingest.dicom_files import write_study
from tests.support import DCMTK


@pytest.mark.parametrize("encoding", ["+te", "+ti", "+tb", "+td"])
def test_an_instance_is_described_as_pydicom_reads_it_in_every_uncompressed_syntax(
    tmp_path: Path, encoding: str
) -> None:
    (original,) = write_study(tmp_path / "study", series=1, instances=1)
    path = tmp_path / "converted.dcm"
    subprocess.run([f"{DCMTK}/dcmconv", encoding, str(original), str(path)], check=True)
    dataset = dcmread(path)
    described = describe(path)
    assert described.path == path
    assert (
        described.sop_uid,
        described.sop_class_uid,
        described.series_uid,
        described.transfer_syntax_uid,
    ) == (
        dataset.SOPInstanceUID,
        dataset.SOPClassUID,
        dataset.SeriesInstanceUID,
        dataset.file_meta.TransferSyntaxUID,
    )


def test_a_stored_file_that_is_not_dicom_or_lacks_its_identity_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.dcm"
    text.write_text("not an image")
    with pytest.raises(TargetRefused, match=r"notes\.dcm is not readable DICOM"):
        describe(text)
    (original,) = write_study(tmp_path / "study", series=1, instances=1)
    anonymous = tmp_path / "anonymous.dcm"
    subprocess.run([f"{DCMTK}/dcmodify", "-nb", "-ea", "(0020,000E)", str(original)], check=True)
    original.rename(anonymous)
    with pytest.raises(TargetRefused, match=r"no \(0020,000E\)"):
        describe(anonymous)


def test_a_blob_shorter_than_its_event_says_is_refused_as_missing(tmp_path: Path) -> None:
    """A new blob is visible before it is flushed: after a power loss it can be cut short.
    Staging it for a target refuses it like a missing blob, rather than sending part of it."""
    (original,) = write_study(tmp_path / "study", series=1, instances=1)
    data = original.read_bytes()
    store = FolderBlobStore(tmp_path / "blobs", min_free_bytes=0)
    key = instance_key(study_uid="1.2.3", series_uid="1.2.3.4", sop_uid="1.2.3.4.5")
    stored = store.put(key, data[: len(data) // 2])
    whole = BlobReference(key=stored.key, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    with pytest.raises(BlobNotFound, match=f"holds {len(data) // 2} bytes, not the {len(data)}"):
        stage(store, [whole], folder=tmp_path / "job")
    store.put(key, data)
    (staged,) = stage(store, [whole], folder=tmp_path / "retried")
    assert staged.path.read_bytes() == data
