"""Helpers for the streams stories: real workers, instances, config, the log read back."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from infra.catalogue import (
    BlobReference,
    InstanceReceived,
    ModuleSaved,
    RuleSaved,
    SettingsSaved,
    TargetSaved,
)
from infra.events import Envelope, Payload
from infra.settings import LogSettings
from infra.topics import Topic
from streams.config import SETTINGS_NAME
from tests import support
from tests.support import LogReader

ROOT = Path(__file__).parents[2]
DECISION_TOPICS = [topic for topic in Topic if topic.value.startswith("commands.")] + [Topic.SERIES]


def config_event(payload: Payload) -> Envelope:
    return Envelope(payload=payload, source="test", subject=payload.partition_key(), actor="alice")


def settings_saved(**values: float) -> Envelope:
    return config_event(SettingsSaved(name=SETTINGS_NAME, after=values))


def target_saved(name: str, **fields: Any) -> Envelope:
    return config_event(TargetSaved(name=name, after={"target_type": "dummy", **fields}))


def module_saved(name: str, **fields: Any) -> Envelope:
    return config_event(ModuleSaved(name=name, after={"docker_tag": f"{name}:1", **fields}))


def rule_saved(name: str, **fields: Any) -> Envelope:
    return config_event(RuleSaved(name=name, after=fields))


def instance(study: str, series: str, number: int, **tags: str) -> Envelope:
    sop = f"{series}.{number}"
    return Envelope(
        payload=InstanceReceived(
            study_uid=study,
            series_uid=series,
            sop_uid=sop,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            blob=BlobReference(key=f"{study}/{series}/{sop}.dcm", size=100, sha256="0" * 64),
            tags={"StudyInstanceUID": study, "SeriesInstanceUID": series, **tags},
        ),
        source="test-ingest",
        subject=sop,
    )


@contextmanager
def reading(settings: LogSettings) -> Iterator[LogReader]:
    """A reader of the decision topics from the beginning."""
    with support.reading(settings, DECISION_TOPICS) as reader:
        yield reader


class WorkerProcess:
    """`python -m streams` against the test's topics; stopped (or killed) by the test."""

    def __init__(self, settings: LogSettings, logfile: Path) -> None:
        env = {
            **os.environ,
            "TALARIA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "TALARIA_TOPIC_PREFIX": settings.topic_prefix,
            "TALARIA_CONSUMER_SESSION_TIMEOUT_MS": str(settings.consumer_session_timeout_ms),
            "TALARIA_CONSUMER_HEARTBEAT_MS": str(settings.consumer_heartbeat_ms),
            "TALARIA_CONSUMER_MAX_POLL_INTERVAL_MS": str(settings.consumer_max_poll_interval_ms),
            "TALARIA_DATA_DIR": str(logfile.parent / "data"),
            "TALARIA_BLOB_MIN_FREE_BYTES": "0",
        }
        self._log = logfile.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


@contextmanager
def workers(settings: LogSettings, logdir: Path, count: int = 1) -> Iterator[list[WorkerProcess]]:
    started = [WorkerProcess(settings, logdir / f"worker-{i}.log") for i in range(count)]
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()
