"""Query jobs against Orthanc as a DICOM source: C-FIND study root, C-GET, the intake."""

from collections import Counter
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread

from executors.query.worker import QuerySettings
from infra.blobstore import FolderBlobStore, parse_key
from infra.catalogue import (
    AccessionFound,
    AccessionNotFound,
    AccessionRetrieved,
    InstanceReceived,
    QueryJobCompleted,
)
from infra.topics import Topic
from tests.executors.dispatch.conftest import dataset_bytes_of
from tests.executors.query.conftest import (
    Orthanc,
    QueryWorkerProcess,
    completed,
    load_into,
    pacs,
    save_targets,
    submit,
    write_studies,
)
from tests.support import reading

pytestmark = pytest.mark.integration


def assert_byte_identical(
    settings: QuerySettings, orthanc: Orthanc, received: list[InstanceReceived], study_uid: str
) -> None:
    """Every instance Orthanc holds for the study went through the intake unchanged: the same
    data set (file meta is each writer's own) and the same transfer syntax."""
    store = FolderBlobStore(settings.blob_dir, min_free_bytes=0)
    held = orthanc.instance_files(study_uid)
    ours = {event.sop_uid: event for event in received if event.study_uid == study_uid}
    assert set(ours) == set(held)
    for sop_uid, original in held.items():
        blob = store.get(parse_key(ours[sop_uid].blob.key))
        assert dataset_bytes_of(blob) == dataset_bytes_of(original)
        stored_syntax = dcmread(BytesIO(original)).file_meta.TransferSyntaxUID
        assert ours[sop_uid].transfer_syntax_uid == stored_syntax


def test_a_job_of_five_accessions_retrieves_the_four_the_pacs_holds_and_reports_the_fifth(
    settings: QuerySettings, orthanc: Orthanc, query_worker: QueryWorkerProcess, tmp_path: Path
) -> None:
    studies = write_studies(
        tmp_path / "studies", ["ACC1", "ACC2", "ACC3", "ACC4"], series=2, instances=3
    )
    load_into(orthanc, studies)
    save_targets(settings, {"pacs": pacs(orthanc)})
    with reading(settings, [Topic.JOBS, Topic.INSTANCES]) as reader:
        job_id = submit(settings, "pacs", pacs(orthanc), forced_rule="priors")
        reader.wait(completed(job_id), timeout_s=90, what="the query job to complete")

        [done] = [c for c in reader.of(QueryJobCompleted) if c.job_id == job_id]
        assert (done.retrieved, done.not_found, done.failed) == (4, 1, 0)
        assert [n.accession for n in reader.of(AccessionNotFound)] == ["MISSING"]
        found = {f.accession: f for f in reader.of(AccessionFound)}
        assert {a: (f.series_count, f.instance_count) for a, f in found.items()} == {
            a: (2, 6) for a in ("ACC1", "ACC2", "ACC3", "ACC4")
        }
        retrieved = {r.accession: r for r in reader.of(AccessionRetrieved)}
        assert sorted(retrieved) == ["ACC1", "ACC2", "ACC3", "ACC4"]
        for study in studies:
            assert retrieved[study.accession].study_uids == [study.study_uid]
            assert retrieved[study.accession].instances == 6

        received = reader.of(InstanceReceived)
        assert len(received) == 24
        assert {(r.intake, r.job_id) for r in received} == {("retrieve", job_id)}
        assert {r.tags["talariaForceRule"] for r in received} == {"priors"}
        for study in studies:
            assert_byte_identical(settings, orthanc, received, study.study_uid)


def test_a_worker_killed_mid_job_finishes_it_after_a_restart_without_retrieving_twice(
    settings: QuerySettings, orthanc: Orthanc, tmp_path: Path
) -> None:
    studies = write_studies(
        tmp_path / "studies", ["ACC1", "ACC2", "ACC3", "ACC4"], series=3, instances=20
    )
    load_into(orthanc, studies)
    save_targets(settings, {"pacs": pacs(orthanc)})
    study_of = {study.study_uid: study.accession for study in studies}
    with reading(settings, [Topic.JOBS, Topic.INSTANCES]) as reader:
        first = QueryWorkerProcess(settings, tmp_path / "first.log")
        try:
            job_id = submit(settings, "pacs", pacs(orthanc))
            # Killed while the second accession is being retrieved.
            reader.wait(
                lambda r: any(study_of[i.study_uid] == "ACC2" for i in r.of(InstanceReceived)),
                timeout_s=120,
                what="the second accession's first instance",
            )
            first.kill()
        finally:
            first.stop()
        before = {r.accession for r in reader.of(AccessionRetrieved)}
        assert not reader.of(QueryJobCompleted), "the kill came too late to interrupt the job"
        assert "ACC1" in before
        assert before != {"ACC1", "ACC2", "ACC3", "ACC4"}

        second = QueryWorkerProcess(settings, tmp_path / "second.log")
        try:
            reader.wait(completed(job_id), timeout_s=120, what="the job to complete")
        finally:
            second.stop()

        [done] = reader.of(QueryJobCompleted)
        assert (done.retrieved, done.not_found, done.failed) == (4, 1, 0)
        retrieved = [r.accession for r in reader.of(AccessionRetrieved)]
        assert sorted(retrieved) == ["ACC1", "ACC2", "ACC3", "ACC4"]  # each once
        times = Counter(i.sop_uid for i in reader.of(InstanceReceived))
        for study in studies:
            held = orthanc.instance_files(study.study_uid)
            assert set(held) <= set(times), f"{study.accession} retrieved incompletely"
            if study.accession in before:
                assert {times[sop] for sop in held} == {1}, f"{study.accession} retrieved twice"
