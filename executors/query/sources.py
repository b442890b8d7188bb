"""Where query jobs retrieve from: a DICOM peer (C-FIND study root, then C-GET or C-MOVE), a
DICOMweb server (QIDO-RS, then WADO-RS), or a local folder of DICOM files (a `file://`
DICOMweb target, indexed in a small SQLite file and re-indexed where files changed).

Every source finds the series of an accession (study and series descriptions filtered with
DICOM wildcards `*` and `?`), then retrieves them one series at a time, handing each instance
to `deliver` (the intake) exactly as the source sent it.
"""

import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import httpx
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    StoragePresentationContexts,
    build_context,
    build_role,
    evt,
)
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from executors.dispatch import TargetMisconfigured, TargetRefused, TargetUnavailable
from executors.dispatch.scu import Peer
from executors.dispatch.targets import target_settings
from executors.dispatch.targets.dicom import DicomSettings, DicomTarget
from executors.dispatch.targets.dicomweb import DicomWebSettings, web_client
from executors.dispatch.targets.http import call
from executors.query.association import Open, associate
from infra.errors import TransientError
from ingest.errors import CannotUnderstand, Refused
from ingest.intake import Arrival
from ingest.multipart import boundary_of, split_parts
from ingest.part10 import IMPLEMENTATION_CLASS_UID

Deliver = Callable[[Arrival], None]
"""Take one retrieved instance in; raises `Refused` (with the DICOM status) if it cannot be."""

_PENDING = frozenset({0xFF00, 0xFF01})
_MAX_STORAGE_CONTEXTS = 127  # one presentation context is the C-GET model's (PS3.8: 128)
_NUMBER_OF_SERIES_RELATED_INSTANCES = "00201209"


@dataclass(frozen=True, kw_only=True)
class Filters:
    """Wildcard patterns; empty matches everything."""

    study_description: str = ""
    series_description: str = ""


@dataclass(frozen=True, kw_only=True)
class SeriesMatch:
    study_uid: str
    series_uid: str
    instances: int | None
    """How many instances the source says the series holds, when it says."""


class Source(Protocol):
    def find(self, accession: str, filters: Filters) -> list[SeriesMatch]:
        """The series of `accession` that pass `filters`; empty when the source has none."""
        ...

    def retrieve(self, series: SeriesMatch, deliver: Deliver) -> int:
        """Hand every instance of `series` to `deliver`; how many were handed over."""
        ...


SourceSettings = DicomSettings | DicomWebSettings


def source_settings(config: Mapping[str, Any] | None, *, name: str) -> SourceSettings:
    """A source's settings; `TargetMisconfigured` when there is no such target, or it is not a
    DICOM or DICOMweb target whose direction allows queries."""
    if config is None:
        raise TargetMisconfigured(f"no target named {name!r}")
    settings = target_settings(config)
    if not isinstance(settings, DicomSettings | DicomWebSettings):
        raise TargetMisconfigured(f"target {name!r} is not a DICOM or DICOMweb target")
    if settings.direction == "store":
        raise TargetMisconfigured(f"target {name!r} has direction 'store': it is no source")
    return settings


def open_source(config: Mapping[str, Any] | None, *, name: str, index_dir: Path) -> Source:
    """The source a target configuration describes (see `source_settings`)."""
    settings = source_settings(config, name=name)
    if isinstance(settings, DicomSettings):
        return DicomSource(settings)
    if settings.is_folder:
        return FolderSource(folder_of(settings.url), index_dir=index_dir)
    return DicomWebSource(settings)


# --- DICOM: C-FIND study root, C-GET or C-MOVE ------------------------------------------------


class DicomSource:
    def __init__(self, settings: DicomSettings) -> None:
        self._settings = settings
        self._target = DicomTarget(settings)
        self._peer: Peer = self._target.peer({})

    def _associate(self, **arguments: Any) -> Open:
        return associate(self._target, self._peer, timeout_s=self._settings.timeout_s, **arguments)

    def find(self, accession: str, filters: Filters) -> list[SeriesMatch]:
        context = build_context(StudyRootQueryRetrieveInformationModelFind)
        with self._associate(contexts=[context]) as association:
            study = Dataset()
            study.QueryRetrieveLevel = "STUDY"
            study.AccessionNumber = accession
            study.StudyInstanceUID = ""
            study.StudyDescription = filters.study_description
            studies = [
                str(found.StudyInstanceUID)
                for found in _find(association, study)
                if found.get("StudyInstanceUID")
            ]
            matches = []
            for study_uid in studies:
                series = Dataset()
                series.QueryRetrieveLevel = "SERIES"
                series.StudyInstanceUID = study_uid
                series.SeriesInstanceUID = ""
                series.SeriesDescription = filters.series_description
                series.NumberOfSeriesRelatedInstances = ""
                matches += [
                    SeriesMatch(
                        study_uid=study_uid,
                        series_uid=str(found.SeriesInstanceUID),
                        instances=_count(found.get("NumberOfSeriesRelatedInstances")),
                    )
                    for found in _find(association, series)
                    if found.get("SeriesInstanceUID")
                ]
        return matches

    def retrieve(self, series: SeriesMatch, deliver: Deliver) -> int:
        stored = 0

        def store(event: Event) -> int:
            nonlocal stored
            status = _deliver_stored(event, deliver)
            stored += status == 0
            return status

        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = series.study_uid
        identifier.SeriesInstanceUID = series.series_uid
        if self._settings.retrieve == "move":
            final = self._move(identifier, store)
        else:
            final = self._get(identifier, store)
        operation = f"C-{self._settings.retrieve.upper()}"
        if final is None or final.Status not in (0x0000, 0xB000):
            code = "none" if final is None else f"0x{final.Status:04X}"
            raise _status_error(operation, final.Status if final is not None else 0xA700, code)
        failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
        if final.Status == 0xB000 or failed:
            raise TargetUnavailable(f"{operation}: partial retrieve, {failed} instances failed")
        return stored

    def _get(self, identifier: Dataset, store: Callable[[Event], int]) -> Dataset | None:
        """C-GET: the source sends the instances back on our association."""
        storage = StoragePresentationContexts[:_MAX_STORAGE_CONTEXTS]
        contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)] + [
            build_context(context.abstract_syntax or "", ALL_TRANSFER_SYNTAXES)
            for context in storage
        ]
        roles = [build_role(context.abstract_syntax or "", scp_role=True) for context in storage]
        with self._associate(
            contexts=contexts, roles=roles, handlers=[(evt.EVT_C_STORE, store)]
        ) as association:
            return _final(
                association.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet),
                operation="C-GET",
            )

    def _move(self, identifier: Dataset, store: Callable[[Event], int]) -> Dataset | None:
        """C-MOVE to our own AE title (`aet_source`): the source opens associations to
        `move_bind:move_port`, where a storage SCP listens for the duration of the move and
        takes associations from the source's AE title only."""
        settings = self._settings
        receiver = AE(ae_title=self._peer.calling)
        for context in StoragePresentationContexts:
            receiver.add_supported_context(context.abstract_syntax or "", ALL_TRANSFER_SYNTAXES)
        receiver.require_calling_aet = [self._peer.called]
        try:
            server = receiver.start_server(
                (settings.move_bind, settings.move_port),
                block=False,
                evt_handlers=[(evt.EVT_C_STORE, store)],
            )
        except OSError as error:
            raise TargetUnavailable(
                f"cannot listen on {settings.move_bind}:{settings.move_port}: {error}"
            ) from error
        try:
            context = build_context(StudyRootQueryRetrieveInformationModelMove)
            with self._associate(contexts=[context]) as association:
                return _final(
                    association.send_c_move(
                        identifier,
                        self._peer.calling,
                        StudyRootQueryRetrieveInformationModelMove,
                    ),
                    operation="C-MOVE",
                )
        finally:
            if server is not None:
                server.shutdown()


def _final(
    responses: Iterator[tuple[Dataset, Dataset | None]], *, operation: str
) -> Dataset | None:
    """The last status of a C-GET or C-MOVE (after its pending ones)."""
    final = None
    for status, _identifier in responses:
        if not status:
            raise TargetUnavailable(f"{operation}: the source stopped answering")
        final = status
    return final


def _find(association: Any, identifier: Dataset) -> Iterator[Dataset]:
    for status, found in association.send_c_find(
        identifier, StudyRootQueryRetrieveInformationModelFind
    ):
        if not status:
            raise TargetUnavailable("C-FIND: the source stopped answering")
        if status.Status in _PENDING:
            if found is not None:
                yield found
        elif status.Status != 0x0000:
            raise _status_error("C-FIND", status.Status, f"0x{status.Status:04X}")


def _status_error(operation: str, status: int, code: str) -> Exception:
    """0xA7xx (out of resources) and a missing status may pass; other failures will not."""
    if status & 0xFF00 == 0xA700:
        return TargetUnavailable(f"{operation} failed with status {code}")
    return TargetRefused(f"{operation} failed with status {code}")


def _deliver_stored(event: Event, deliver: Deliver) -> int:
    """A C-STORE of our C-GET or C-MOVE: its data set as received goes to `deliver`."""
    request = event.request
    assert isinstance(request, C_STORE)
    association = event.assoc
    sender = association.acceptor if association.is_requestor else association.requestor
    arrival = Arrival.from_data_set(
        [request.DataSet.getbuffer()] if request.DataSet is not None else [],
        sop_class_uid=str(request.AffectedSOPClassUID),
        sop_instance_uid=str(request.AffectedSOPInstanceUID),
        transfer_syntax_uid=str(event.context.transfer_syntax),
        implementation_class_uid=sender.implementation_class_uid or IMPLEMENTATION_CLASS_UID,
        implementation_version_name=sender.implementation_version_name or "",
    )
    try:
        deliver(arrival)
    except Refused as refusal:
        return refusal.status
    return 0x0000


def _count(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


# --- DICOMweb: QIDO-RS, WADO-RS ---------------------------------------------------------------


class DicomWebSource:
    def __init__(self, settings: DicomWebSettings) -> None:
        self._settings = settings
        base = settings.url.rstrip("/")
        self._qido = (settings.qido_url_prefix or base).rstrip("/")
        self._wado = base

    def find(self, accession: str, filters: Filters) -> list[SeriesMatch]:
        with web_client(self._settings) as client:
            study_query = {"AccessionNumber": accession, "includefield": "0020000D"}
            if filters.study_description:
                study_query["StudyDescription"] = filters.study_description
            studies = _uids(
                call(client, "GET", f"{self._qido}/studies", params=study_query), "0020000D"
            )
            matches = []
            for study_uid in studies:
                series_query = {"includefield": _NUMBER_OF_SERIES_RELATED_INSTANCES}
                if filters.series_description:
                    series_query["SeriesDescription"] = filters.series_description
                response = call(
                    client, "GET", f"{self._qido}/studies/{study_uid}/series", params=series_query
                )
                matches += [
                    SeriesMatch(
                        study_uid=study_uid,
                        series_uid=_first(item, "0020000E"),
                        instances=_count(_first(item, _NUMBER_OF_SERIES_RELATED_INSTANCES)),
                    )
                    for item in _results(response)
                    if _first(item, "0020000E")
                ]
        return matches

    def retrieve(self, series: SeriesMatch, deliver: Deliver) -> int:
        url = f"{self._wado}/studies/{series.study_uid}/series/{series.series_uid}"
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        with web_client(self._settings) as client:
            response = call(client, "GET", url, headers={"Accept": accept})
        content_type = response.headers.get("content-type", "")
        try:
            parts = list(split_parts(response.content, boundary_of(content_type)))
        except CannotUnderstand as error:
            raise TargetUnavailable(f"WADO-RS: unreadable answer from {url}: {error}") from error
        for part in parts:
            _deliver_file(part.content, deliver)
        return len(parts)


def _results(response: httpx.Response) -> list[dict[str, Any]]:
    if response.status_code == 204 or not response.content:
        return []
    body = response.json()
    if not isinstance(body, list):
        raise TargetRefused("QIDO-RS answered something else than a list of results")
    return [item for item in body if isinstance(item, dict)]


def _uids(response: httpx.Response, tag: str) -> list[str]:
    return [uid for uid in (_first(item, tag) for item in _results(response)) if uid]


def _first(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _deliver_file(data: bytes, deliver: Deliver) -> None:
    try:
        deliver(Arrival.from_file(data))
    except Refused as refusal:
        if isinstance(refusal, TransientError):
            raise TargetUnavailable(f"an instance could not be taken now: {refusal}") from refusal
        raise TargetRefused(f"an instance was refused: {refusal}") from refusal


# --- a local folder, indexed ------------------------------------------------------------------


def folder_of(url: str) -> Path:
    """The folder of a `file:///...` URL."""
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise TargetMisconfigured(f"{url}: only local folders (file:///path) can be read")
    return Path(unquote(parsed.path))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    accession TEXT,
    study_uid TEXT,
    series_uid TEXT,
    study_description TEXT,
    series_description TEXT
);
CREATE INDEX IF NOT EXISTS files_accession ON files (accession);
CREATE INDEX IF NOT EXISTS files_series ON files (series_uid);
"""
_INDEXED_TAGS = [
    "AccessionNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "StudyDescription",
    "SeriesDescription",
]


class FolderSource:
    """A folder of DICOM files, indexed once in `<index_dir>/<hash of the folder>.sqlite`; each
    find re-reads only the files whose size or modification time changed (and forgets the
    files that went)."""

    def __init__(self, folder: Path, *, index_dir: Path) -> None:
        if not folder.is_dir():
            raise TargetMisconfigured(f"{folder} is not a folder")
        self._folder = folder
        index_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
        self.index_path = index_dir / f"{digest}.sqlite"
        with closing(self._connect()) as db, db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.index_path, timeout=30)

    def reindex(self) -> int:
        """Bring the index up to date with the folder; how many files were (re-)read."""
        on_disk: dict[str, tuple[int, int]] = {}
        for root, _dirs, files in os.walk(self._folder):
            for name in files:
                file = Path(root) / name
                try:
                    stat = file.stat()
                except OSError:
                    continue
                on_disk[str(file)] = (stat.st_mtime_ns, stat.st_size)
        read = 0
        with closing(self._connect()) as db, db:
            known = {
                row[0]: (row[1], row[2])
                for row in db.execute("SELECT path, mtime_ns, size FROM files")
            }
            gone = [(path,) for path in known if path not in on_disk]
            db.executemany("DELETE FROM files WHERE path = ?", gone)
            for path, (mtime_ns, size) in on_disk.items():
                if known.get(path) == (mtime_ns, size):
                    continue
                db.execute(
                    "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (path, mtime_ns, size, *_indexed(Path(path))),
                )
                read += 1
        return read

    def find(self, accession: str, filters: Filters) -> list[SeriesMatch]:
        self.reindex()
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT study_uid, series_uid, count(*) FROM files WHERE accession = ?"
                " AND (? = '' OR study_description GLOB ?)"
                " AND (? = '' OR series_description GLOB ?)"
                " GROUP BY study_uid, series_uid ORDER BY study_uid, series_uid",
                (
                    accession,
                    filters.study_description,
                    filters.study_description,
                    filters.series_description,
                    filters.series_description,
                ),
            ).fetchall()
        return [SeriesMatch(study_uid=s, series_uid=r, instances=n) for s, r, n in rows]

    def retrieve(self, series: SeriesMatch, deliver: Deliver) -> int:
        with closing(self._connect()) as db:
            paths = [
                Path(row[0])
                for row in db.execute(
                    "SELECT path FROM files WHERE series_uid = ? ORDER BY path",
                    (series.series_uid,),
                )
            ]
        for path in paths:
            try:
                data = path.read_bytes()
            except OSError as error:
                raise TargetUnavailable(f"{path} cannot be read: {error}") from error
            _deliver_file(data, deliver)
        return len(paths)


def _indexed(path: Path) -> tuple[str | None, ...]:
    """The indexed attributes of a file; all None when it is no DICOM file."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=_INDEXED_TAGS)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return (None,) * len(_INDEXED_TAGS)
    return tuple(str(ds.get(keyword, "") or "") for keyword in _INDEXED_TAGS)
