"""Materialise a job's inputs from the blob store as local files a target can send."""

from collections.abc import Sequence
from pathlib import Path

from executors.dispatch import TargetRefused
from executors.dispatch.target import StagedInstance
from infra.blobstore import BlobStore, check_materialised, parse_key
from infra.catalogue import BlobReference
from ingest.errors import CannotUnderstand
from ingest.part10 import read_file_meta
from ingest.tags import Elements, read_header

_SOP_CLASS_UID = 0x00080016
_SOP_INSTANCE_UID = 0x00080018
_SERIES_INSTANCE_UID = 0x0020000E


def describe(path: Path) -> StagedInstance:
    """What a target needs to know of a stored instance, read from its header only (with the
    receiver's header walker: pydicom's element conversion costs milliseconds per instance)."""
    try:
        raw = path.read_bytes()
        meta = read_file_meta(raw)
        elements = read_header(
            memoryview(raw)[meta.dataset_offset :],
            transfer_syntax_uid=meta.transfer_syntax_uid,
            last=_SERIES_INSTANCE_UID,
        ).elements
        return StagedInstance(
            path=path,
            sop_uid=_uid(elements, _SOP_INSTANCE_UID),
            sop_class_uid=_uid(elements, _SOP_CLASS_UID),
            transfer_syntax_uid=meta.transfer_syntax_uid,
            series_uid=_uid(elements, _SERIES_INSTANCE_UID),
        )
    except (CannotUnderstand, OSError) as error:
        raise TargetRefused(f"stored {path.name} is not readable DICOM: {error}") from error


def _uid(elements: Elements, tag: int) -> str:
    _vr, value = elements.get(tag, ("UI", b""))
    text = value.decode("ascii", "replace").rstrip("\0 ") if isinstance(value, bytes) else ""
    if not text:
        raise CannotUnderstand(f"no ({tag >> 16:04X},{tag & 0xFFFF:04X}) in the data set")
    return text


def stage(
    store: BlobStore, inputs: Sequence[BlobReference], *, folder: Path
) -> list[StagedInstance]:
    """Copy (or link) every input into `folder` and describe it."""
    folder.mkdir(parents=True, exist_ok=True)
    staged = []
    for number, reference in enumerate(inputs):
        path = folder / f"{number:06d}.dcm"
        store.copy_to(parse_key(reference.key), path)
        check_materialised(path, key=reference.key, size=reference.size)
        staged.append(describe(path))
    return staged
