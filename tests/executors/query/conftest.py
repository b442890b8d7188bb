"""Query tests: studies loaded into Orthanc (the dispatch tests' fixture: a PACS with C-FIND,
C-GET and DICOMweb), and `talaria query run` as a process the test may kill."""

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from executors.query import jobs
from executors.query.worker import QuerySettings
from infra.catalogue import QueryJobCompleted, TargetSaved
from infra.events import Envelope
from infra.kafka.broker import LocalBroker
from infra.log import EventProducer
from tests.conftest import settings_for
from tests.executors.dispatch.conftest import Orthanc, orthanc, storescp
from tests.ingest.dicom_files import ct_instance, new_uid
from tests.support import LogReader, publish

ROOT = Path(__file__).parents[3]


@dataclass(frozen=True)
class Study:
    accession: str
    study_uid: str
    files: list[Path] = field(default_factory=list)


def write_studies(
    folder: Path, accessions: list[str], *, series: int, instances: int
) -> list[Study]:
    """One study per accession number, `series` x `instances` small CT images each."""
    studies = []
    for accession in accessions:
        study = Study(accession=accession, study_uid=new_uid())
        for s in range(series):
            series_uid = new_uid()
            for i in range(instances):
                ds = ct_instance(
                    study_uid=study.study_uid,
                    series_uid=series_uid,
                    number=i + 1,
                    rows=32,
                    AccessionNumber=accession,
                    StudyDescription=f"CT {accession}",
                    SeriesDescription="AXIAL" if s == 0 else f"CORONAL {s}",
                )
                path = folder / accession / f"s{s}" / f"i{i:03d}.dcm"
                path.parent.mkdir(parents=True, exist_ok=True)
                ds.save_as(path, enforce_file_format=True)
                study.files.append(path)
        studies.append(study)
    return studies


def load_into(orthanc: Orthanc, studies: list[Study]) -> None:
    with httpx.Client(base_url=orthanc.url, timeout=30) as client:
        for study in studies:
            for path in study.files:
                client.post("/instances", content=path.read_bytes()).raise_for_status()


@pytest.fixture
def settings(kafka_broker: LocalBroker, tmp_path: Path) -> QuerySettings:
    log_settings = settings_for(kafka_broker)
    return QuerySettings(
        **log_settings.model_dump(exclude={"data_dir"}),
        data_dir=tmp_path / "data",
        blob_dir=tmp_path / "data" / "blobs",
        blob_min_free_bytes=0,
        query_retry_first_delay_s=0.5,
        query_retry_max_delay_s=1,
        query_retry_max_attempts=3,
    )


def target_saved(name: str, **config: Any) -> Envelope:
    return Envelope(
        payload=TargetSaved(name=name, after=config), source="test", subject=name, actor="alice"
    )


def save_targets(settings: QuerySettings, targets: dict[str, dict[str, Any]]) -> None:
    publish(settings, [target_saved(name, **config) for name, config in targets.items()])


def environment(settings: QuerySettings) -> dict[str, str]:
    """The environment of a Talaria process working with the test's broker, topics and data."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TALARIA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "TALARIA_TOPIC_PREFIX": settings.topic_prefix,
        "TALARIA_CONSUMER_SESSION_TIMEOUT_MS": str(settings.consumer_session_timeout_ms),
        "TALARIA_CONSUMER_HEARTBEAT_MS": str(settings.consumer_heartbeat_ms),
        "TALARIA_CONSUMER_MAX_POLL_INTERVAL_MS": str(settings.consumer_max_poll_interval_ms),
        "TALARIA_DATA_DIR": str(settings.data_dir),
        "TALARIA_BLOB_DIR": str(settings.blob_dir),
        "TALARIA_BLOB_MIN_FREE_BYTES": "0",
        "TALARIA_QUERY_RETRY_FIRST_DELAY_S": str(settings.query_retry_first_delay_s),
        "TALARIA_QUERY_RETRY_MAX_DELAY_S": str(settings.query_retry_max_delay_s),
        "TALARIA_QUERY_RETRY_MAX_ATTEMPTS": str(settings.query_retry_max_attempts),
    }


class QueryWorkerProcess:
    """`talaria query run` against the test's topics; stopped (or killed) by the test."""

    def __init__(self, settings: QuerySettings, logfile: Path) -> None:
        self._log = logfile.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ui", "query", "run"],
            cwd=ROOT,
            env=environment(settings),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


@pytest.fixture
def query_worker(settings: QuerySettings, tmp_path: Path) -> Iterator[QueryWorkerProcess]:
    worker = QueryWorkerProcess(settings, tmp_path / "query-worker.log")
    yield worker
    worker.stop()


ACCESSIONS = ["ACC1", "ACC2", "MISSING", "ACC3", "ACC4"]


def pacs(orthanc: Orthanc) -> dict[str, object]:
    return {
        "target_type": "dicom",
        "direction": "query",
        "ip": "127.0.0.1",
        "port": orthanc.dicom_port,
        "aet_target": "PACS",
        "aet_source": "TALARIA",
    }


def submit(
    settings: QuerySettings, source: str, config: dict[str, object], *, forced_rule: str = ""
) -> str:
    """A job of `ACCESSIONS` from `source`, submitted as the UI and the command line do."""
    with EventProducer(settings, client_id="test") as producer:
        return jobs.submit(
            producer,
            source=source,
            source_config=config,
            accessions=ACCESSIONS,
            actor="alice",
            forced_rule=forced_rule,
        )


def completed(job_id: str) -> Callable[[LogReader], bool]:
    return lambda reader: any(c.job_id == job_id for c in reader.of(QueryJobCompleted))


__all__ = ["Orthanc", "orthanc", "storescp"]  # fixtures shared with the dispatch tests
