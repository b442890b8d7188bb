"""Fixtures for processing stories: a real Docker engine, offline-built modules, a real broker."""

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import pytest
from pydicom import dcmread

from executors.processing.processor import processor_service
from executors.processing.settings import ProcessorSettings
from executors.service import ExecutorService
from infra.blobstore import FolderBlobStore, instance_key, parse_key
from infra.catalogue import (
    BlobReference,
    ModuleSaved,
    ModuleStep,
    ProcessingFailed,
    ProcessingStarted,
    ProcessingStepCompleted,
    ProcessSeries,
    RuleSaved,
)
from infra.events import Envelope, Payload
from infra.kafka.broker import LocalBroker
from infra.topics import Lane, Topic
from tests.conftest import settings_for
from tests.executors.images import busybox_module_image, docker_client, tag_module_image
from tests.ingest.dicom_files import write_study
from tests.support import LogReader, reading


@pytest.fixture(scope="session")
def docker_engine() -> docker.DockerClient:
    """The local engine, started if needed; Docker tests fail (never skip) without one."""
    return docker_client()


@pytest.fixture(scope="session")
def busybox_module(docker_engine: docker.DockerClient) -> str:
    return busybox_module_image(docker_engine)


@pytest.fixture(scope="session")
def tag_module(docker_engine: docker.DockerClient) -> str:
    return tag_module_image(docker_engine)


@pytest.fixture
def settings(kafka_broker: LocalBroker, tmp_path: Path) -> ProcessorSettings:
    log_settings = settings_for(kafka_broker)
    return ProcessorSettings(
        **log_settings.model_dump(exclude={"data_dir"}),
        data_dir=tmp_path / "data",
        blob_dir=tmp_path / "blobs",
        blob_min_free_bytes=0,
        default_module_timeout_s=60,
    )


@pytest.fixture
def blobs(settings: ProcessorSettings) -> FolderBlobStore:
    assert settings.blob_dir is not None
    return FolderBlobStore(settings.blob_dir, min_free_bytes=0)


@contextmanager
def running(settings: ProcessorSettings) -> Iterator[ExecutorService]:
    with processor_service(settings) as service:
        yield service


@pytest.fixture
def job_log(settings: ProcessorSettings) -> Iterator[LogReader]:
    """Everything the processor writes: job facts and the commands that follow them."""
    topics = [Topic.JOBS, Topic.DISPATCH_NORMAL, Topic.NOTIFY_NORMAL, Topic.PROCESS_NORMAL]
    with reading(settings, topics) as log:
        yield log


def stored_series(blobs: FolderBlobStore, folder: Path, *, instances: int) -> list[BlobReference]:
    """A series ingested into the blob store, as the inputs of a command."""
    references = []
    for path in write_study(folder, series=1, instances=instances, rows=8):
        ds = dcmread(path, stop_before_pixels=True)
        key = instance_key(
            study_uid=ds.StudyInstanceUID,
            series_uid=ds.SeriesInstanceUID,
            sop_uid=ds.SOPInstanceUID,
        )
        ref = blobs.put(key, path.read_bytes())
        references.append(BlobReference(key=ref.key, size=ref.size, sha256=ref.sha256))
    return references


def config_event(payload: Payload) -> Envelope:
    return Envelope(payload=payload, source="test", subject=payload.partition_key(), actor="alice")


def module_saved(name: str, **config: Any) -> Envelope:
    return config_event(ModuleSaved(name=name, after=config))


def rule_saved(name: str, **config: Any) -> Envelope:
    return config_event(RuleSaved(name=name, after=config))


def process_series(
    inputs: list[BlobReference], *steps: tuple[str, dict[str, Any]], **fields: Any
) -> Envelope:
    """A `ProcessSeries` command as the streams worker would publish it."""
    first = uids_of(inputs[0])
    job = fields.pop("job_id", uuid.uuid4().hex)
    command = ProcessSeries(
        study_uid=first[0],
        lane=fields.pop("lane", Lane.NORMAL),
        job_id=job,
        rule=fields.pop("rule", "ct"),
        series_uids=[first[1]],
        steps=[ModuleStep(module=module, settings=values) for module, values in steps],
        inputs=inputs,
        tags={"PatientID": "P001", "AccessionNumber": "ACC42"},
        **fields,
    )
    return Envelope(payload=command, source="test", subject=job)


def uids_of(reference: BlobReference) -> list[str]:
    """Study and series UID of a stored instance, from its key."""
    return parse_key(reference.key).path.split("/")[1:3]


def finished(job_id: str, *, outcomes: int = 1) -> Callable[[LogReader], bool]:
    """Whether `outcomes` attempts of the job ended: failed, or their last step completed."""

    def check(log: LogReader) -> bool:
        started = [p for p in log.of(ProcessingStarted) if p.job_id == job_id]
        if not started:
            return False
        last = len(started[0].modules) - 1
        failed = [p for p in log.of(ProcessingFailed) if p.job_id == job_id]
        done = [p for p in log.of(ProcessingStepCompleted) if p.job_id == job_id and p.step == last]
        return len(failed) + len([p for p in done if p.exit_code == 0]) >= outcomes

    return check


def events_of(log: LogReader, job_id: str) -> list[Payload]:
    """The job's facts (not commands) in the order they were read."""
    return [
        e.payload
        for e, _ in log.seen
        if e.payload.topic() is Topic.JOBS and getattr(e.payload, "job_id", None) == job_id
    ]
