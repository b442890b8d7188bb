"""DICOMweb (QIDO-RS and WADO-RS against Orthanc's plugin) and folder sources, failures that
are retried with backoff, and the folder index."""

import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from executors.query import jobs
from executors.query.service import query_service
from executors.query.sources import Filters, FolderSource
from executors.query.worker import QuerySettings
from infra.blobstore import FolderBlobStore, parse_key
from infra.catalogue import (
    AccessionFailed,
    AccessionNotFound,
    AccessionRetrieved,
    InstanceReceived,
    QueryFact,
    QueryJobCompleted,
)
from infra.log import EventProducer
from infra.topics import Lane, Topic
from tests.executors.dispatch.conftest import dataset_bytes_of
from tests.executors.query.conftest import (
    Orthanc,
    completed,
    load_into,
    pacs,
    save_targets,
    submit,
    write_studies,
)
from tests.support import LogReader, free_port, reading

pytestmark = pytest.mark.integration


def run_job(settings: QuerySettings, source: str, config: dict[str, object]) -> list[object]:
    """Submit `ACCESSIONS` from `source` to an in-process worker; every event of the job."""
    save_targets(settings, {source: config})
    with reading(settings, [Topic.JOBS, Topic.INSTANCES]) as reader, query_service(settings):
        job_id = submit(settings, source, config)
        reader.wait(completed(job_id), timeout_s=90, what="the query job to complete")
    return [envelope.payload for envelope, _ in reader.seen]


def retrieved_files(settings: QuerySettings, events: list[object]) -> dict[str, bytes]:
    store = FolderBlobStore(settings.blob_dir, min_free_bytes=0)
    return {
        event.sop_uid: store.get(parse_key(event.blob.key))
        for event in events
        if isinstance(event, InstanceReceived)
    }


def test_a_dicomweb_source_is_queried_with_qido_and_retrieved_with_wado(
    settings: QuerySettings, orthanc: Orthanc, tmp_path: Path
) -> None:
    studies = write_studies(
        tmp_path / "studies", ["ACC1", "ACC2", "ACC3", "ACC4"], series=2, instances=2
    )
    load_into(orthanc, studies)
    events = run_job(
        settings,
        "web-pacs",
        {"target_type": "dicomweb", "direction": "both", "url": f"{orthanc.url}/dicom-web"},
    )
    [done] = [e for e in events if isinstance(e, QueryJobCompleted)]
    assert (done.retrieved, done.not_found, done.failed) == (4, 1, 0)
    assert [e.accession for e in events if isinstance(e, AccessionNotFound)] == ["MISSING"]
    ours = retrieved_files(settings, events)
    held = {
        sop: data
        for study in studies
        for sop, data in orthanc.instance_files(study.study_uid).items()
    }
    assert set(ours) == set(held)
    assert all(dataset_bytes_of(ours[sop]) == dataset_bytes_of(held[sop]) for sop in held)


def test_a_folder_source_is_indexed_and_retrieved_byte_identical(
    settings: QuerySettings, tmp_path: Path
) -> None:
    folder = tmp_path / "archive"
    studies = write_studies(folder, ["ACC1", "ACC2", "ACC3", "ACC4"], series=2, instances=2)
    (folder / "README.txt").write_text("not a DICOM file")
    events = run_job(
        settings,
        "archive",
        {"target_type": "dicomweb", "direction": "query", "url": f"file://{folder}"},
    )
    [done] = [e for e in events if isinstance(e, QueryJobCompleted)]
    assert (done.retrieved, done.not_found, done.failed) == (4, 1, 0)
    ours = retrieved_files(settings, events)
    originals = {path: path.read_bytes() for study in studies for path in study.files}
    # A folder's files are Part 10 files: they go in whole, file meta and all.
    assert sorted(ours.values()) == sorted(originals.values())
    assert {e.intake for e in events if isinstance(e, InstanceReceived)} == {"retrieve"}


def test_the_folder_index_rereads_only_files_that_changed(tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    [study] = write_studies(folder, ["ACC1"], series=2, instances=3)
    source = FolderSource(folder, index_dir=tmp_path / "index")
    assert source.reindex() == 6
    assert source.reindex() == 0
    assert [m.instances for m in source.find("ACC1", Filters())] == [3, 3]
    assert [m.instances for m in source.find("ACC1", Filters(series_description="AX*"))] == [3]
    assert source.find("ACC1", Filters(study_description="MR*")) == []

    [other] = write_studies(tmp_path / "new", ["ACC9"], series=1, instances=1)
    moved = folder / "late.dcm"
    other.files[0].rename(moved)
    study.files[0].unlink()
    os.utime(study.files[1], ns=(1, 1))  # touched: read again
    assert source.reindex() == 2
    assert [m.instances for m in source.find("ACC9", Filters())] == [1]
    assert sorted(m.instances or 0 for m in source.find("ACC1", Filters())) == [2, 3]


def test_an_unreachable_source_is_retried_with_backoff_then_reported_for_every_accession(
    settings: QuerySettings,
) -> None:
    down = {
        "target_type": "dicom",
        "direction": "query",
        "ip": "127.0.0.1",
        "port": free_port(),
        "aet_target": "PACS",
    }
    events = run_job(settings, "down", down)
    failures = [e for e in events if isinstance(e, AccessionFailed)]
    by_accession: dict[str, list[AccessionFailed]] = {}
    for failure in failures:
        by_accession.setdefault(failure.accession, []).append(failure)
    assert set(by_accession) == {"ACC1", "ACC2", "MISSING", "ACC3", "ACC4"}
    for attempts in by_accession.values():
        assert [(f.attempt, f.will_retry) for f in attempts] == [(1, True), (2, True), (3, False)]
        assert "could not be reached" in attempts[0].reason
    # One accession's backoff holds up none of the others: every first attempt comes before
    # any second one.
    assert [f.attempt for f in failures[:5]] == [1] * 5
    [done] = [e for e in events if isinstance(e, QueryJobCompleted)]
    assert (done.retrieved, done.not_found, done.failed) == (0, 0, 5)
    assert not [e for e in events if isinstance(e, AccessionRetrieved)]


def test_an_offpeak_job_waits_for_the_window_while_a_normal_one_runs(
    settings: QuerySettings, tmp_path: Path
) -> None:
    folder = tmp_path / "archive"
    write_studies(folder, ["ACC1"], series=1, instances=1)
    later = datetime.now() + timedelta(hours=2)
    window = f"{later:%H:%M}-{later + timedelta(hours=1):%H:%M}"
    settings = settings.model_copy(update={"offpeak_window": window})
    config = {"target_type": "dicomweb", "direction": "query", "url": f"file://{folder}"}
    save_targets(settings, {"archive": config})
    with (
        reading(settings, [Topic.JOBS]) as reader,
        query_service(settings),
        EventProducer(settings, client_id="test") as producer,
    ):
        offpeak, normal = (
            jobs.submit(
                producer,
                source="archive",
                source_config=config,
                accessions=["ACC1"],
                actor="alice",
                lane=lane,
            )
            for lane in (Lane.OFFPEAK, Lane.NORMAL)
        )
        reader.wait(completed(normal), timeout_s=90, what="the normal job")
        time.sleep(3)
    assert {type(fact).__name__ for fact in facts_of(reader, offpeak)} == {"QueryJobSubmitted"}


def facts_of(reader: LogReader, job_id: str) -> list[QueryFact]:
    return [f for f in reader.of(QueryFact) if f.job_id == job_id]


def test_a_job_may_write_to_a_folder_target_instead_of_the_intake(
    settings: QuerySettings, tmp_path: Path
) -> None:
    archive, out = tmp_path / "archive", tmp_path / "out"
    out.mkdir()
    studies = write_studies(archive, ["ACC1", "ACC/2"], series=2, instances=2)
    source = {"target_type": "dicomweb", "direction": "query", "url": f"file://{archive}"}
    folder = {"target_type": "folder", "folder": str(out)}
    save_targets(settings, {"archive": source, "out": folder})
    with (
        reading(settings, [Topic.JOBS, Topic.INSTANCES]) as reader,
        query_service(settings),
        EventProducer(settings, client_id="test") as producer,
    ):
        with pytest.raises(jobs.QueryRequestInvalid, match="no folder target named 'archive'"):
            jobs.submit(
                producer,
                source="archive",
                source_config=source,
                accessions=["ACC1"],
                actor="alice",
                destination="archive",
                destination_config=source,
            )
        job_id = jobs.submit(
            producer,
            source="archive",
            source_config=source,
            accessions=["ACC1", "ACC/2"],
            actor="alice",
            destination="out",
            destination_config=folder,
        )
        reader.wait(completed(job_id), timeout_s=90, what="the job")
    assert not reader.of(InstanceReceived)
    for study, name in zip(studies, ["ACC1", "ACC_2"], strict=True):
        written = out / job_id / name
        assert (written / ".complete").exists()
        files = sorted(p.read_bytes() for p in written.glob("*.dcm"))
        assert files == sorted(path.read_bytes() for path in study.files)


def test_a_dicom_source_may_retrieve_with_c_move_to_talarias_own_ae(
    settings: QuerySettings, orthanc: Orthanc, tmp_path: Path
) -> None:
    studies = write_studies(tmp_path / "studies", ["ACC1", "ACC2"], series=2, instances=2)
    load_into(orthanc, studies)
    config = {**pacs(orthanc), "retrieve": "move", "move_port": orthanc.move_port}
    events = run_job(settings, "pacs-move", config)
    [done] = [e for e in events if isinstance(e, QueryJobCompleted)]
    assert (done.retrieved, done.not_found, done.failed) == (2, 3, 0)
    ours = retrieved_files(settings, events)
    held = {
        sop: data
        for study in studies
        for sop, data in orthanc.instance_files(study.study_uid).items()
    }
    assert set(ours) == set(held)
    assert all(dataset_bytes_of(ours[sop]) == dataset_bytes_of(held[sop]) for sop in held)
