"""Many files at once, for STOW-RS, uploads and folder imports: each file goes through
`Intake.receive_file` on its own, and the outcomes are summed up as a STOW-RS response
(PS3.18 §10.5.3: ReferencedSOPSequence for what was stored, FailedSOPSequence with the
C-STORE status as FailureReason for what was not).
"""

import io
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from ingest.errors import STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS, CannotUnderstand, Refused
from ingest.intake import Intake, Origin
from ingest.part10 import read_file_meta

MAX_MEMBER_BYTES: Final = 4 * 1024**3
ZIP_MAGIC: Final = b"PK\x03\x04"


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What became of one file."""

    status: int
    sop_class_uid: str = ""
    sop_uid: str = ""
    reason: str = ""

    @property
    def stored(self) -> bool:
        return self.status == STATUS_SUCCESS


def receive_files(intake: Intake, files: Iterable[bytes], origin: Origin) -> list[Outcome]:
    """Offer every file to `intake`; one outcome per file, in order."""
    return [receive_one(intake, data, origin) for data in files]


def receive_one(intake: Intake, data: bytes, origin: Origin) -> Outcome:
    """Offer one file; its outcome instead of an exception."""
    try:
        received = intake.receive_file(data, origin)
    except Refused as refusal:
        sop_class, sop = _identity(data)
        return Outcome(
            status=refusal.status, sop_class_uid=sop_class, sop_uid=sop, reason=str(refusal)
        )
    return Outcome(
        status=STATUS_SUCCESS, sop_class_uid=received.sop_class_uid, sop_uid=received.sop_uid
    )


def _identity(data: bytes) -> tuple[str, str]:
    try:
        meta = read_file_meta(data)
    except CannotUnderstand:
        return "", ""
    return meta.sop_class_uid, meta.sop_instance_uid


def zip_members(data: bytes) -> Iterator[bytes]:
    """The files inside a zip archive (folders skipped); `CannotUnderstand` if it is not one."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as error:
        raise CannotUnderstand(f"not a zip archive: {error}") from error
    with archive:
        for member in archive.infolist():
            if member.is_dir():
                continue
            if member.file_size > MAX_MEMBER_BYTES:
                raise CannotUnderstand(f"{member.filename} is larger than {MAX_MEMBER_BYTES}")
            try:
                yield archive.read(member)
            except (zipfile.BadZipFile, NotImplementedError, OSError) as error:
                raise CannotUnderstand(f"{member.filename}: {error}") from error


def stow_response(outcomes: list[Outcome]) -> tuple[int, dict[str, Any]]:
    """HTTP status and DICOM JSON body of a STOW-RS response (PS3.18 §10.5.3)."""
    stored = [o for o in outcomes if o.stored]
    failed = [o for o in outcomes if not o.stored]
    body: dict[str, Any] = {}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_reference(o) for o in stored]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_failure(o) for o in failed]}
    return _http_status(stored=len(stored), failed=failed), body


def _http_status(*, stored: int, failed: list[Outcome]) -> int:
    if not failed:
        return 200
    if stored:
        return 202
    if all(o.status == STATUS_OUT_OF_RESOURCES for o in failed):
        return 503
    return 409


def _reference(outcome: Outcome) -> dict[str, Any]:
    return {
        "00081150": {"vr": "UI", "Value": [outcome.sop_class_uid]},
        "00081155": {"vr": "UI", "Value": [outcome.sop_uid]},
    }


def _failure(outcome: Outcome) -> dict[str, Any]:
    item = {"00081197": {"vr": "US", "Value": [outcome.status]}}
    if outcome.sop_uid:
        item |= _reference(outcome)
    return item
