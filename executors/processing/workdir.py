"""A job's working folder on this machine, laid out as mercure modules expect.

``in/`` holds the inputs as ``<SeriesInstanceUID>#<SOPInstanceUID>.dcm``, each with a ``.tags``
JSON of its routing tags beside it, and ``task.json``; ``out/`` is where the module writes. Between
two steps of a chain the output folder becomes the next input folder (its ``result.json``
removed), as in mercure, with ``.tags`` written for outputs that have none. Inputs are hard links
into the folder blob store when the modules run as a non-root user (who cannot write them); root
modules get copies.
"""

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog
from pydantic import JsonValue

from executors.processing import JobFailed, OutputInvalid
from infra.blobstore import BlobKey, BlobStore, check_materialised, parse_key
from infra.catalogue import BlobReference
from ingest.errors import CannotUnderstand
from ingest.part10 import read_file_meta
from ingest.tags import Snapshot, TagReader

log = structlog.get_logger(__name__)

TASK_FILE = "task.json"
RESULT_FILE = "result.json"
_READER = TagReader()


@dataclass(frozen=True)
class Workdir:
    """The folders of one running job."""

    root: Path

    @property
    def in_dir(self) -> Path:
        return self.root / "in"

    @property
    def out_dir(self) -> Path:
        return self.root / "out"


class OutputKey(Protocol):
    """Where an output instance with these UIDs goes in the blob store."""

    def __call__(self, *, study_uid: str, series_uid: str, sop_uid: str) -> BlobKey: ...


@dataclass(frozen=True, kw_only=True)
class StoredOutputs:
    """A chain's outputs, in the blob store."""

    blobs: list[BlobReference]
    series_uids: list[str]


def snapshot_of(data: bytes) -> Snapshot:
    """The UIDs and routing tags of a Part 10 file (the header only; pixel data is not read)."""
    meta = read_file_meta(data)
    return _READER.read(
        data[meta.dataset_offset :],
        transfer_syntax_uid=meta.transfer_syntax_uid,
        media_sop_class_uid=meta.sop_class_uid,
    )


def prepare_workdir(
    root: Path, *, blobs: BlobStore, inputs: Sequence[BlobReference], link: bool
) -> Workdir:
    """Materialise `inputs` into a fresh working folder under `root`."""
    workdir = Workdir(root)
    for folder in (workdir.in_dir, workdir.out_dir):
        folder.mkdir(parents=True)
        folder.chmod(0o777)  # the module's uid writes here
    for number, reference in enumerate(inputs):
        staged = workdir.in_dir / f".staged-{number}"
        if link:
            blobs.copy_to(parse_key(reference.key), staged)
        else:
            staged.write_bytes(blobs.get(parse_key(reference.key)))
        check_materialised(staged, key=reference.key, size=reference.size)
        snapshot = _readable_snapshot(staged, what=f"input {reference.key}")
        name = f"{snapshot.series_uid}#{snapshot.sop_uid}"
        staged.rename(staged.with_name(f"{name}.dcm"))
        _write_tags(staged.with_name(f"{name}.tags"), snapshot)
    return workdir


def _readable_snapshot(path: Path, *, what: str) -> Snapshot:
    try:
        return snapshot_of(path.read_bytes())
    except CannotUnderstand as error:
        raise JobFailed(f"{what} {path.name} is not readable DICOM: {error}") from error


def _write_tags(path: Path, snapshot: Snapshot) -> None:
    path.write_text(json.dumps(snapshot.tags, ensure_ascii=False))
    path.chmod(0o644)


def write_task_file(workdir: Workdir, task: dict[str, Any]) -> None:
    path = workdir.in_dir / TASK_FILE
    path.write_text(json.dumps(task, indent=4))
    path.chmod(0o644)


def read_result(workdir: Workdir) -> JsonValue:
    """The module's `result.json`, or None if it wrote none or wrote no JSON (as mercure)."""
    path = workdir.out_dir / RESULT_FILE
    if not path.is_file():
        return None
    try:
        result: JsonValue = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        log.warning("result.json is not JSON; ignored", error=str(error))
        return None
    return result


def output_files(workdir: Workdir) -> list[Path]:
    return sorted(workdir.out_dir.glob("*.dcm"))


def advance(workdir: Workdir) -> None:
    """The outputs of one step become the inputs of the next, each with its `.tags` file."""
    (workdir.out_dir / RESULT_FILE).unlink(missing_ok=True)
    shutil.rmtree(workdir.in_dir)
    workdir.out_dir.rename(workdir.in_dir)
    workdir.out_dir.mkdir()
    workdir.out_dir.chmod(0o777)
    for path in sorted(workdir.in_dir.glob("*.dcm")):
        tags = path.with_suffix(".tags")
        if not tags.exists():
            _write_tags(tags, _readable_snapshot(path, what="output"))


def collect_outputs(workdir: Workdir, *, blobs: BlobStore, key_for: OutputKey) -> StoredOutputs:
    """Store every DICOM output under a key built from its validated UIDs."""
    stored: list[BlobReference] = []
    series: dict[str, None] = {}
    for path in output_files(workdir):
        data = path.read_bytes()
        try:
            snapshot = snapshot_of(data)
            key = key_for(
                study_uid=snapshot.study_uid,
                series_uid=snapshot.series_uid,
                sop_uid=snapshot.sop_uid,
            )
        except (CannotUnderstand, ValueError) as error:
            raise OutputInvalid(
                f"output {path.name} is not a storable DICOM file: {error}"
            ) from error
        reference = blobs.put(key, data)
        stored.append(
            BlobReference(key=reference.key, size=reference.size, sha256=reference.sha256)
        )
        series[snapshot.series_uid] = None
    return StoredOutputs(blobs=stored, series_uids=list(series))
