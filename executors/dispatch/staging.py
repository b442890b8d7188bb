"""Materialise a job's inputs from the blob store as local files a target can send."""

from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from executors.dispatch import TargetRefused
from executors.dispatch.target import StagedInstance
from infra.blobstore import BlobStore, parse_key
from infra.catalogue import BlobReference


def describe(path: Path) -> StagedInstance:
    """What a target needs to know of a stored instance, read from its header only."""
    try:
        dataset = dcmread(
            path,
            stop_before_pixels=True,
            specific_tags=["SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID"],
        )
        return StagedInstance(
            path=path,
            sop_uid=str(dataset.SOPInstanceUID),
            sop_class_uid=str(dataset.SOPClassUID),
            transfer_syntax_uid=str(dataset.file_meta.TransferSyntaxUID),
            series_uid=str(dataset.SeriesInstanceUID),
        )
    except (InvalidDicomError, AttributeError, OSError) as error:
        raise TargetRefused(f"stored {path.name} is not readable DICOM: {error}") from error


def stage(
    store: BlobStore, inputs: Sequence[BlobReference], *, folder: Path
) -> list[StagedInstance]:
    """Copy (or link) every input into `folder` and describe it."""
    folder.mkdir(parents=True, exist_ok=True)
    staged = []
    for number, reference in enumerate(inputs):
        path = folder / f"{number:06d}.dcm"
        store.copy_to(parse_key(reference.key), path)
        staged.append(describe(path))
    return staged
