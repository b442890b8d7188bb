"""Per-job overhead of Talaria's processor around a no-op module, beside a bare `docker run`.

Starts its own broker and an in-process processor, stores one small CT instance, then times
`--jobs` jobs one after another, each from publishing `ProcessSeries` to reading its
`ProcessingStepCompleted` (the module: busybox, exits at once), and the same image run bare with
the docker SDK (create, start, wait, remove) as many times. Needs a Docker engine (started if
its socket does not answer) and DCMTK.
Usage (from the repository root): python -m bench.processing [--jobs 20]
"""

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import docker
from docker.types import Mount
from pydicom import dcmread

from executors.processing.policy import contract_environment
from executors.processing.processor import processor_service
from executors.processing.runtime import IN_DIR, OUT_DIR
from executors.processing.settings import ProcessorSettings
from infra.admin import ensure_topics
from infra.blobstore import FolderBlobStore, instance_key
from infra.catalogue import (
    BlobReference,
    ModuleSaved,
    ModuleStep,
    ProcessingStepCompleted,
    ProcessSeries,
)
from infra.events import Envelope
from infra.kafka.broker import BrokerLayout, LocalBroker, fetch_jars
from infra.settings import BrokerSettings
from infra.topics import Topic
from tests.executors.images import busybox_module_image, docker_client
from tests.ingest.dicom_files import write_study
from tests.support import LogReader, free_port, publish

NOOP = {"BEHAVIOUR": "noop"}


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    return (
        f"{name:<44} p50 {statistics.median(ms):7.1f} ms   mean {statistics.mean(ms):7.1f} ms   "
        f"max {ms[-1]:7.1f} ms   (n={len(ms)})"
    )


def stored_instance(blobs: FolderBlobStore, folder: Path) -> BlobReference:
    (path,) = write_study(folder, series=1, instances=1, rows=8)
    ds = dcmread(path, stop_before_pixels=True)
    key = instance_key(
        study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID, sop_uid=ds.SOPInstanceUID
    )
    ref = blobs.put(key, path.read_bytes())
    return BlobReference(key=ref.key, size=ref.size, sha256=ref.sha256)


def job(reference: BlobReference) -> Envelope:
    job_id = uuid.uuid4().hex
    study, series = reference.key.split("/")[1:3]
    command = ProcessSeries(
        study_uid=study,
        job_id=job_id,
        rule="bench",
        series_uids=[series],
        steps=[ModuleStep(module="noop")],
        inputs=[reference],
    )
    return Envelope(payload=command, source="bench", subject=job_id)


def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("no ProcessingStepCompleted within 60 s")
        time.sleep(0.002)


def bench_talaria(settings: ProcessorSettings, image: str, jobs: int, work: Path) -> list[float]:
    blobs = FolderBlobStore(work / "blobs", min_free_bytes=0)
    reference = stored_instance(blobs, work / "dicom")
    publish(
        settings,
        [
            Envelope(
                payload=ModuleSaved(name="noop", after={"docker_tag": image, "environment": NOOP}),
                source="bench",
                subject="module:noop",
            )
        ],
    )
    reader = LogReader(settings, [Topic.JOBS])
    durations, container = [], []
    with processor_service(settings):
        for number in range(jobs + 1):  # the first one warms up the consumer groups
            began = time.perf_counter()
            publish(settings, [job(reference)])
            until(lambda seen=number: len(reader.of(ProcessingStepCompleted)) > seen)
            if number:
                durations.append(time.perf_counter() - began)
                container.append(reader.of(ProcessingStepCompleted)[-1].duration_s)
    reader.close()
    print(summary("talaria  publish -> StepCompleted", durations))
    print(summary("talaria  of which the container ran", container))
    return durations


def bench_bare(client: docker.DockerClient, image: str, jobs: int, work: Path) -> list[float]:
    """The same image, environment and folder mounts, without Talaria."""
    folders = [work / "bare-in", work / "bare-out"]
    for folder in folders:
        folder.mkdir()
    mounts = [
        Mount(target=target, source=str(folder), type="bind")
        for target, folder in zip((IN_DIR, OUT_DIR), folders, strict=True)
    ]
    environment = {**NOOP, **contract_environment()}
    durations = []
    for _ in range(jobs):
        began = time.perf_counter()
        client.containers.run(
            image, environment=environment, mounts=mounts, network_mode="none", remove=True
        )
        durations.append(time.perf_counter() - began)
    print(summary("bare     docker run --rm (SDK)", durations))
    return durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    client = docker_client()
    image = busybox_module_image(client)
    with tempfile.TemporaryDirectory() as home:
        layout = BrokerLayout(
            home=Path(home) / "kafka", port=free_port(), controller_port=free_port()
        )
        broker = LocalBroker(layout, libs=fetch_jars(BrokerSettings().kafka_cache_dir))
        broker.start()
        try:
            settings = ProcessorSettings(
                kafka_bootstrap=layout.bootstrap,
                topic_prefix="bench.",
                data_dir=Path(home) / "data",
                blob_dir=Path(home) / "blobs",
                blob_min_free_bytes=0,
                consumer_session_timeout_ms=6000,
                consumer_max_poll_interval_ms=10_000,
            )
            ensure_topics(settings)
            bare = bench_bare(client, image, args.jobs, Path(home))
            talaria = bench_talaria(settings, image, args.jobs, Path(home))
            overhead = statistics.median(talaria) - statistics.median(bare)
            print(f"{'overhead per job (p50 talaria - p50 bare)':<44} {overhead * 1000:7.1f} ms")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
