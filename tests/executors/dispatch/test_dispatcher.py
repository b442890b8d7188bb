"""The dispatcher on the real log: commands in, instances at the target, truthful events out."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydicom import dcmread

from executors.dispatch.dispatcher import DispatchSettings, confirmation_key
from executors.dispatch.service import dispatch_service
from infra.blobstore import FolderBlobStore, instance_key
from infra.catalogue import (
    BlobReference,
    DispatchFailed,
    DispatchSeries,
    DispatchStarted,
    DispatchSucceeded,
    JobCancelled,
    JobRetryRequested,
    Notify,
    QueueResumed,
    QueueSuspended,
    RuleSaved,
    TargetSaved,
)
from infra.events import Envelope, Payload
from infra.kafka.broker import LocalBroker
from infra.topics import Lane, Topic
from tests.conftest import settings_for
from tests.executors.dispatch.conftest import StoreSCP, dataset_bytes, storescp_command
from tests.ingest.dicom_files import write_study
from tests.support import free_port, publish, reading, serving, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[3]


@pytest.fixture
def settings(kafka_broker: LocalBroker, tmp_path: Path) -> DispatchSettings:
    log_settings = settings_for(kafka_broker)
    return DispatchSettings(
        **log_settings.model_dump(exclude={"data_dir"}),
        data_dir=tmp_path / "data",
        blob_dir=tmp_path / "blobs",
        blob_min_free_bytes=0,
        retry_first_delay_s=1,
        retry_max_delay_s=2,
        retry_max_attempts=4,
    )


def stored_series(
    settings: DispatchSettings, folder: Path, *, instances: int
) -> list[BlobReference]:
    """A series ingested into the blob store, as the inputs of a command."""
    store = FolderBlobStore(settings.blob_dir, min_free_bytes=0)
    references = []
    for path in write_study(folder, series=1, instances=instances):
        ds = dcmread(path, stop_before_pixels=True)
        key = instance_key(
            study_uid=ds.StudyInstanceUID,
            series_uid=ds.SeriesInstanceUID,
            sop_uid=ds.SOPInstanceUID,
        )
        ref = store.put(key, path.read_bytes())
        references.append(BlobReference(key=ref.key, size=ref.size, sha256=ref.sha256))
    return references


def target_saved(name: str, **config: Any) -> Envelope:
    return Envelope(
        payload=TargetSaved(name=name, after=config), source="test", subject=name, actor="alice"
    )


def dispatch(inputs: list[BlobReference], *, target: str, lane: Lane = Lane.NORMAL) -> Envelope:
    job = uuid.uuid4().hex
    return Envelope(
        payload=DispatchSeries(
            study_uid="1.2.3",
            lane=lane,
            job_id=job,
            rule="ct",
            target=target,
            series_uids=["1.2.3.4"],
            inputs=inputs,
        ),
        source="test",
        subject=job,
    )


def dicom_target(name: str, port: int, aet: str = "STORE") -> Envelope:
    return target_saved(name, target_type="dicom", ip="127.0.0.1", port=port, aet_target=aet)


def jobs(settings: DispatchSettings) -> Any:
    """Job facts and the notices that follow them."""
    return reading(settings, [Topic.JOBS, Topic.NOTIFY_NORMAL])


def received_match(
    storescp: StoreSCP, settings: DispatchSettings, inputs: list[BlobReference]
) -> bool:
    sent = {dataset_bytes(settings.blob_dir / ref.key) for ref in inputs}
    return {dataset_bytes(path) for path in storescp.received()} == sent


def test_a_series_reaches_a_dicom_target_and_the_log_says_so(
    settings: DispatchSettings, storescp: StoreSCP, tmp_path: Path
) -> None:
    inputs = stored_series(settings, tmp_path / "src", instances=5)
    publish(settings, [dicom_target("pacs-metered", storescp.port)])
    command = dispatch(inputs, target="pacs-metered", lane=Lane.URGENT)
    with jobs(settings) as log, dispatch_service(settings) as _:
        publish(settings, [command])
        log.wait(lambda r: r.of(DispatchSucceeded), timeout_s=60, what="success")
    assert received_match(storescp, settings, inputs)
    (started,) = log.of(DispatchStarted)
    (succeeded,) = log.of(DispatchSucceeded)
    assert (started.instance_count, succeeded.confirmed, succeeded.attempt) == (5, 5, 1)
    assert succeeded.job_id == command.payload.job_id  # type: ignore[attr-defined]
    metric = REGISTRY.get_sample_value
    assert metric("talaria_dispatch_instances_total", {"target": "pacs-metered"}) == 5
    total = sum(ref.size for ref in inputs)
    assert metric("talaria_dispatch_bytes_total", {"target": "pacs-metered"}) == total


def test_a_target_down_for_the_first_attempts_gets_the_series_in_the_end(
    settings: DispatchSettings, tmp_path: Path
) -> None:
    inputs = stored_series(settings, tmp_path / "src", instances=3)
    port = free_port()
    folder = tmp_path / "late"
    folder.mkdir()
    publish(settings, [dicom_target("late", port)])
    with jobs(settings) as log, dispatch_service(settings):
        publish(settings, [dispatch(inputs, target="late")])
        log.wait(lambda r: len(r.of(DispatchFailed)) >= 2, timeout_s=60, what="two failures")
        with serving(storescp_command(port, folder), port=port):
            log.wait(lambda r: r.of(DispatchSucceeded), timeout_s=60, what="success")
    failures = log.of(DispatchFailed)
    assert all(f.will_retry and f.next_attempt_at is not None for f in failures)
    assert [f.attempt for f in failures] == list(range(1, len(failures) + 1))
    assert log.of(DispatchSucceeded)[0].attempt == len(failures) + 1
    assert {dataset_bytes(p) for p in folder.iterdir()} == {
        dataset_bytes(settings.blob_dir / ref.key) for ref in inputs
    }


def test_a_permanent_refusal_fails_at_once_and_a_retry_after_the_fix_succeeds(
    settings: DispatchSettings, storescp: StoreSCP, tmp_path: Path
) -> None:
    inputs = stored_series(settings, tmp_path / "src", instances=2)
    command = dispatch(inputs, target="pacs")
    job_id = command.payload.job_id  # type: ignore[attr-defined]
    # The rule notifies on errors and completion; another rule that chose the target does not.
    webhook = {"notification_webhook": "http://127.0.0.1:9/hook"}
    rules = [
        Envelope(payload=RuleSaved(name=name, after=after), source="test", subject=name)
        for name, after in (("ct", webhook), ("quiet", {}))
    ]
    publish(settings, rules)
    command.payload.rules.append("quiet")  # type: ignore[attr-defined]
    with jobs(settings) as log, dispatch_service(settings):
        publish(settings, [target_saved("pacs", target_type="dicom", ip="127.0.0.1", port=1)])
        publish(settings, [command])
        log.wait(lambda r: r.of(DispatchFailed), timeout_s=60, what="the failure")
        (failure,) = log.of(DispatchFailed)
        assert failure.will_retry  # connection refused is transient...
        publish(settings, [target_saved("pacs", target_type="dicom", ip="127.0.0.1", port=0)])
        log.wait(
            lambda r: any(not f.will_retry for f in r.of(DispatchFailed)),
            timeout_s=60,
            what="a permanent failure",
        )
        # ...an invalid port is not: the job is in the failure queue. Staff fix the target.
        publish(settings, [dicom_target("pacs", storescp.port)])
        retry = Envelope(
            payload=JobRetryRequested(job_id=job_id), source="ui", subject=job_id, actor="bob"
        )
        publish(settings, [retry])
        log.wait(lambda r: r.of(DispatchSucceeded), timeout_s=60, what="success after retry")
        # A retry of a confirmed job sends nothing again.
        publish(settings, [retry])
        time.sleep(3)
    assert received_match(storescp, settings, inputs)
    assert len(log.of(DispatchSucceeded)) == 1
    # Only the permanent failure and the success are notified, to the rule with a webhook.
    error, completion = log.of(Notify)
    assert (error.trigger, error.rule, error.job_id != job_id) == ("error", "ct", True)
    assert error.details["target"] == "pacs"
    assert "port" in error.details["reason"]
    assert (completion.trigger, completion.details) == (
        "completion",
        {"target": "pacs", "confirmed": 2},
    )
    assert (completion.study_uid, completion.series_uids) == ("1.2.3", ["1.2.3.4"])


def operator(payload: Payload) -> Envelope:
    return Envelope(payload=payload, source="ui", subject=payload.TYPE, actor="carol")


def test_a_suspended_target_holds_its_jobs_and_a_cancelled_job_is_never_sent(
    settings: DispatchSettings, storescp: StoreSCP, tmp_path: Path
) -> None:
    kept = dispatch(stored_series(settings, tmp_path / "a", instances=2), target="held")
    dropped = dispatch(stored_series(settings, tmp_path / "b", instances=2), target="held")
    publish(
        settings,
        [dicom_target("held", storescp.port), operator(QueueSuspended(queue="target:held"))],
    )
    with jobs(settings) as log, dispatch_service(settings):
        publish(settings, [kept, dropped])
        time.sleep(4)
        assert log.of(DispatchStarted) == []
        assert storescp.received() == []
        publish(settings, [operator(JobCancelled(job_id=dropped.payload.job_id))])  # type: ignore[attr-defined]
        publish(settings, [operator(QueueResumed(queue="target:held"))])
        log.wait(
            lambda r: r.of(DispatchSucceeded) and r.of(DispatchFailed), timeout_s=60, what="both"
        )
    (failure,) = log.of(DispatchFailed)
    assert failure.job_id == dropped.payload.job_id  # type: ignore[attr-defined]
    assert "cancelled" in failure.reason
    assert not failure.will_retry
    assert len(storescp.received()) == 2


def dispatcher_process(settings: DispatchSettings, logfile: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TALARIA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "TALARIA_TOPIC_PREFIX": settings.topic_prefix,
        "TALARIA_DATA_DIR": str(settings.data_dir),
        "TALARIA_BLOB_DIR": str(settings.blob_dir),
        "TALARIA_BLOB_MIN_FREE_BYTES": "0",
        "TALARIA_CONSUMER_SESSION_TIMEOUT_MS": "6000",
        "TALARIA_CONSUMER_MAX_POLL_INTERVAL_MS": "10000",
    }
    with logfile.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", "from ui.cli import main; main()", "dispatch", "run"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def test_a_dispatcher_killed_mid_series_delivers_everything_after_its_restart(
    settings: DispatchSettings, storescp: StoreSCP, tmp_path: Path
) -> None:
    inputs = stored_series(settings, tmp_path / "src", instances=500)
    publish(settings, [dicom_target("pacs", storescp.port)])
    first = dispatcher_process(settings, tmp_path / "first.log")
    try:
        with jobs(settings) as log:
            publish(settings, [dispatch(inputs, target="pacs")])
            wait_for(lambda: len(storescp.received()) >= 100, timeout_s=120, what="100 sent")
            first.send_signal(signal.SIGKILL)
            first.wait()
            assert len(storescp.received()) < 500, "the kill must land mid-series"
            second = dispatcher_process(settings, tmp_path / "second.log")
            try:
                log.wait(lambda r: r.of(DispatchSucceeded), timeout_s=180, what="success")
            finally:
                second.terminate()
                second.wait(timeout=30)
    finally:
        first.kill()
        first.wait()
    assert received_match(storescp, settings, inputs)
    assert log.of(DispatchSucceeded)[0].confirmed == 500


def test_a_job_confirmed_before_a_crash_is_reported_again_not_sent_again(
    settings: DispatchSettings, storescp: StoreSCP, tmp_path: Path
) -> None:
    """A dispatcher killed after the target confirmed, before `DispatchSucceeded` was on the
    log, left the confirmation in the blob store; the redelivered command reports it."""
    inputs = stored_series(settings, tmp_path / "src", instances=3)
    publish(settings, [dicom_target("pacs", storescp.port)])
    command = dispatch(inputs, target="pacs")
    job = command.payload.job_id  # type: ignore[attr-defined]
    store = FolderBlobStore(settings.blob_dir, min_free_bytes=0)
    store.put(confirmation_key(job), json.dumps({"confirmed": 3, "warnings": 1}).encode())
    with jobs(settings) as log, dispatch_service(settings) as _:
        publish(settings, [command])
        log.wait(lambda r: r.of(DispatchSucceeded), timeout_s=60, what="success")
    (succeeded,) = log.of(DispatchSucceeded)
    assert (succeeded.job_id, succeeded.confirmed, succeeded.warnings) == (job, 3, 1)
    assert log.of(DispatchStarted) == []
    assert storescp.received() == []
