"""Processing stories on a real broker and a real Docker engine, with modules built offline."""

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import docker
import pytest
from pydicom import dcmread

from executors.processing.settings import ProcessorSettings
from infra.blobstore import FolderBlobStore, parse_key
from infra.catalogue import (
    DispatchSeries,
    JobRetryRequested,
    Notify,
    ProcessingFailed,
    ProcessingStarted,
    ProcessingStepCompleted,
    ProcessSeries,
    QueueResumed,
    QueueSuspended,
    TargetSaved,
)
from infra.events import Envelope
from infra.topics import Topic
from streams.config import Module, Rule
from tests.executors.processing.conftest import (
    config_event,
    events_of,
    finished,
    module_saved,
    process_series,
    rule_saved,
    running,
    stored_series,
)
from tests.support import LogReader, publish, reading, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[3]
WEBHOOK = {"notification_webhook": "http://127.0.0.1:9/hook"}


def series_descriptions(blobs: FolderBlobStore, keys: list[str]) -> dict[str, str]:
    """SOPInstanceUID -> SeriesDescription of stored instances."""
    described = {}
    for key in keys:
        ds = dcmread(blobs.root / parse_key(key).path)
        described[ds.SOPInstanceUID] = ds.SeriesDescription
    return described


def test_a_pydicom_module_rewrites_every_instance_and_its_outputs_are_dispatched(
    settings: ProcessorSettings,
    blobs: FolderBlobStore,
    tag_module: str,
    job_log: LogReader,
    tmp_path: Path,
) -> None:
    inputs = stored_series(blobs, tmp_path / "in", instances=3)
    module = Module(docker_tag=tag_module, settings={"tag": "SeriesDescription", "append": "+m"})
    rule = Rule(
        action="both",
        target=["pacs"],
        processing_module=["anonymize"],
        processing_settings={"append": "+rule"},
    )
    publish(
        settings,
        [
            module_saved("anonymize", **module.model_dump()),
            rule_saved("ct", **rule.model_dump()),
            config_event(TargetSaved(name="pacs", after={"target_type": "dummy"})),
        ],
    )
    merged = rule.module_settings(0, module)
    command = process_series(inputs, ("anonymize", merged), dispatch_targets=["pacs"])
    with running(settings):
        publish(settings, [command, command])  # the second is a redelivery: done once
        job_log.wait(finished(command.subject), timeout_s=60, what="the job")
        wait_for(lambda: len(job_log.of(DispatchSeries)) >= 1, timeout_s=10, what="dispatch")

    started, completed = events_of(job_log, command.subject)
    (dispatch,) = job_log.of(DispatchSeries)
    assert isinstance(started, ProcessingStarted)
    assert started.modules == ["anonymize"]
    assert isinstance(completed, ProcessingStepCompleted)
    assert (completed.exit_code, completed.output_count) == (0, 3)
    assert completed.result["settings"] == {"tag": "SeriesDescription", "append": "+rule"}
    assert completed.result["task_id"] == command.subject
    originals = series_descriptions(blobs, [ref.key for ref in inputs])
    outputs = series_descriptions(blobs, [ref.key for ref in completed.outputs])
    assert outputs == {sop: text + "+rule" for sop, text in originals.items()}
    assert sorted(m["tags_sop"] for m in completed.result["modified"]) == sorted(originals)
    assert completed.log_key is not None
    assert b"modified 3 instances" in blobs.get(parse_key(completed.log_key))
    assert (dispatch.target, dispatch.inputs) == ("pacs", completed.outputs)
    assert dispatch.series_uids == [dcmread(blobs.root / inputs[0].key).SeriesInstanceUID]
    assert len(job_log.of(ProcessingStepCompleted)) == 1


def test_a_chain_feeds_each_step_the_last_ones_output_and_retains_the_originals(
    settings: ProcessorSettings,
    blobs: FolderBlobStore,
    tag_module: str,
    job_log: LogReader,
    tmp_path: Path,
) -> None:
    inputs = stored_series(blobs, tmp_path / "in", instances=2)
    finding = {"__mercure_notification": {"text": "nodule found"}}
    publish(
        settings,
        [
            module_saved("tagger", docker_tag=tag_module, settings={"tag": "SeriesDescription"}),
            rule_saved("ct", action="process", processing_module=["tagger", "tagger"], **WEBHOOK),
        ],
    )
    command = process_series(
        inputs,
        ("tagger", {"tag": "SeriesDescription", "append": "+a"}),
        ("tagger", {"tag": "SeriesDescription", "append": "+b", "result": finding}),
        retain_input_images=True,
    )
    with running(settings):
        publish(settings, [command])
        job_log.wait(finished(command.subject), timeout_s=60, what="the chain")
        wait_for(lambda: job_log.of(Notify), timeout_s=10, what="the notification")

    first, last = job_log.of(ProcessingStepCompleted)
    assert (first.step, first.output_count, first.outputs) == (0, 2, [])
    originals = series_descriptions(blobs, [ref.key for ref in inputs])
    produced = [ref for ref in last.outputs if ref not in inputs]
    assert len(last.outputs) == 4
    assert len(produced) == 2
    assert series_descriptions(blobs, [ref.key for ref in produced]) == {
        sop: text + "+a+b" for sop, text in originals.items()
    }
    (notify,) = job_log.of(Notify)
    assert (notify.trigger, notify.details["text"]) == ("completion", "tagger: nodule found")
    assert not job_log.of(DispatchSeries)


def test_a_module_gets_mercures_contract_and_no_root_no_capabilities_no_network(
    settings: ProcessorSettings,
    busybox_module: str,
    docker_engine: docker.DockerClient,
    blobs: FolderBlobStore,
    job_log: LogReader,
    tmp_path: Path,
) -> None:
    inputs = stored_series(blobs, tmp_path / "in", instances=1)
    publish(
        settings,
        [
            module_saved(
                "who",
                docker_tag=busybox_module,
                environment='{"BEHAVIOUR": "identity", "GREETING": "hello"}',
            ),
            module_saved(
                "offline", docker_tag=busybox_module, environment={"BEHAVIOUR": "network"}
            ),
            module_saved(
                "online",
                docker_tag=busybox_module,
                network_enabled=True,
                environment={"BEHAVIOUR": "network"},
            ),
        ],
    )
    command = process_series(
        inputs, ("who", {"level": 3}), ("offline", {}), ("online", {}), rule="unknown-rule"
    )
    with running(settings):
        publish(settings, [command])
        job_log.wait(finished(command.subject), timeout_s=60, what="the chain")

    identity, offline, online = job_log.of(ProcessingStepCompleted)
    assert identity.result["uid"] == 1000
    assert identity.result["root_write"] is False
    assert identity.result["caps"] == "0000000000000000"
    assert identity.result["greeting"] == "hello"
    assert identity.result["monai_in"] == "/tmp/data"
    assert identity.result["holoscan_out"] == "/tmp/output"
    task = identity.result["task"]
    assert set(task) == {"id", "info", "dispatch", "process", "study", "nomad_info"}
    assert task["process"]["module_name"] == "who"
    assert task["process"]["settings"] == {"level": 3}
    assert task["info"]["uid"] == command.payload.series_uids[0]  # type: ignore[attr-defined]
    assert (task["info"]["uid_type"], task["info"]["mrn"]) == ("series", "P001")
    assert offline.result["interfaces"].split() == ["lo"]
    assert set(online.result["interfaces"].split()) - {"lo"}, "a network interface when enabled"


def test_a_failing_module_a_slow_one_and_a_root_one_each_fail_the_job_with_a_reason(
    settings: ProcessorSettings,
    busybox_module: str,
    docker_engine: docker.DockerClient,
    blobs: FolderBlobStore,
    job_log: LogReader,
    tmp_path: Path,
) -> None:
    inputs = stored_series(blobs, tmp_path / "in", instances=1)
    publish(
        settings,
        [
            module_saved("fail", docker_tag=busybox_module, environment={"BEHAVIOUR": "fail"}),
            module_saved(
                "slow",
                docker_tag=busybox_module,
                timeout_s=1,
                environment={"BEHAVIOUR": "sleep", "SLEEP_S": "30"},
            ),
            module_saved("rooted", docker_tag=busybox_module, requires_root=True),
            rule_saved("ct", action="process", processing_module=["fail"], **WEBHOOK),
        ],
    )
    failing = process_series(inputs, ("fail", {}))
    slow = process_series(inputs, ("slow", {}))
    rooted = process_series(inputs, ("rooted", {}))
    with running(settings):
        publish(settings, [failing, slow, rooted])
        for job in (failing, slow, rooted):
            job_log.wait(finished(job.subject), timeout_s=60, what=f"job {job.subject}")

    def failure(job: Envelope) -> ProcessingFailed:
        (failed,) = [e for e in events_of(job_log, job.subject) if isinstance(e, ProcessingFailed)]
        return failed

    (step,) = [
        e for e in events_of(job_log, failing.subject) if isinstance(e, ProcessingStepCompleted)
    ]
    assert step.exit_code == 3
    assert step.log_key is not None
    assert b"failing on purpose" in blobs.get(parse_key(step.log_key))
    assert failure(failing).reason == "module 'fail' exited with code 3"
    assert failure(failing).step == 0
    assert "time limit of 1 s" in failure(slow).reason
    assert failure(rooted).reason == (
        "module 'rooted' requires root, and this installation does not allow root modules"
    )
    assert [n.trigger for n in job_log.of(Notify)] == ["error", "error", "error"]
    assert not job_log.of(DispatchSeries)
    assert not docker_engine.containers.list(all=True, filters={"label": "talaria.module"})


def test_a_failed_job_retried_after_the_rule_is_fixed_runs_with_the_new_settings(
    settings: ProcessorSettings,
    blobs: FolderBlobStore,
    tag_module: str,
    job_log: LogReader,
    tmp_path: Path,
) -> None:
    inputs = stored_series(blobs, tmp_path / "in", instances=2)
    module = {"docker_tag": tag_module, "settings": {"tag": "SeriesDescription"}}
    publish(
        settings,
        [
            module_saved("tagger", **module),
            rule_saved("ct", action="process", processing_module="tagger"),
        ],
    )
    command = process_series(inputs, ("tagger", {"tag": "SeriesDescription"}))
    retry = Envelope(
        payload=JobRetryRequested(job_id=command.subject),
        source="ui",
        subject="retry",
        actor="alice",
    )
    with running(settings):
        publish(settings, [command])
        job_log.wait(finished(command.subject), timeout_s=60, what="the failure")
        publish(
            settings,
            [
                rule_saved(
                    "ct",
                    action="process",
                    processing_module="tagger",
                    processing_settings={"append": "+fixed"},
                ),
                retry,
                retry,
            ],
        )
        job_log.wait(finished(command.subject, outcomes=2), timeout_s=60, what="the retry")

    (failed,) = job_log.of(ProcessingFailed)
    assert failed.reason == "module 'tagger' exited with code 1"
    reissued = [c for c in job_log.of(ProcessSeries) if c.attempt > 1]
    assert [(c.attempt, c.steps[0].settings) for c in reissued] == [
        (2, {"tag": "SeriesDescription", "append": "+fixed"})
    ]
    assert [s.attempt for s in job_log.of(ProcessingStarted)] == [1, 2]
    last = job_log.of(ProcessingStepCompleted)[-1]
    originals = series_descriptions(blobs, [ref.key for ref in inputs])
    assert series_descriptions(blobs, [ref.key for ref in last.outputs]) == {
        sop: text + "+fixed" for sop, text in originals.items()
    }


def test_a_suspended_queue_holds_its_jobs_until_resumed(
    settings: ProcessorSettings,
    busybox_module: str,
    blobs: FolderBlobStore,
    job_log: LogReader,
    tmp_path: Path,
) -> None:
    inputs = stored_series(blobs, tmp_path / "in", instances=1)
    suspended = Envelope(payload=QueueSuspended(queue="processing"), source="ui", subject="q")
    publish(settings, [module_saved("copy", docker_tag=busybox_module), suspended])
    command = process_series(inputs, ("copy", {}))
    with running(settings):
        publish(settings, [command])
        with pytest.raises(AssertionError):
            job_log.wait(lambda log: log.of(ProcessingStarted), timeout_s=4, what="no start")
        publish(
            settings, [Envelope(payload=QueueResumed(queue="processing"), source="ui", subject="q")]
        )
        job_log.wait(finished(command.subject), timeout_s=60, what="the job")
    (completed,) = job_log.of(ProcessingStepCompleted)
    assert completed.output_count == 1
    assert blobs.get(parse_key(completed.outputs[0].key)) == blobs.get(parse_key(inputs[0].key))


def processor_process(settings: ProcessorSettings, logfile: Path) -> subprocess.Popen[bytes]:
    """`talaria process run` as its own process, configured by environment variables."""
    env: dict[str, Any] = {
        **os.environ,
        "TALARIA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "TALARIA_TOPIC_PREFIX": settings.topic_prefix,
        "TALARIA_DATA_DIR": str(settings.data_dir),
        "TALARIA_BLOB_DIR": str(settings.blob_dir),
        "TALARIA_BLOB_MIN_FREE_BYTES": "0",
        "TALARIA_CONSUMER_SESSION_TIMEOUT_MS": "6000",
        "TALARIA_CONSUMER_MAX_POLL_INTERVAL_MS": "6000",
    }
    with logfile.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", "from ui.cli import main; main()", "process", "run"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def test_a_processor_killed_mid_job_completes_it_once_after_its_restart(
    settings: ProcessorSettings,
    busybox_module: str,
    docker_engine: docker.DockerClient,
    blobs: FolderBlobStore,
    tmp_path: Path,
) -> None:
    inputs = stored_series(blobs, tmp_path / "in", instances=2)
    slow_copy = {"BEHAVIOUR": "sleep", "SLEEP_S": "3"}
    publish(
        settings,
        [
            module_saved("slow", docker_tag=busybox_module, environment=slow_copy),
            module_saved("copy", docker_tag=busybox_module),
        ],
    )
    command = process_series(inputs, ("copy", {}), ("slow", {}), ("copy", {}))
    first = processor_process(settings, tmp_path / "first.log")
    try:
        with reading(settings, [Topic.JOBS]) as log:
            publish(settings, [command])
            wait_for(
                lambda: docker_engine.containers.list(filters={"label": "talaria.module=slow"}),
                timeout_s=60,
                what="the slow step running",
            )
            first.send_signal(signal.SIGKILL)
            first.wait()
            second = processor_process(settings, tmp_path / "second.log")
            try:
                log.wait(finished(command.subject), timeout_s=90, what="the job after restart")
            finally:
                second.send_signal(signal.SIGTERM)
                second.wait(timeout=30)
    finally:
        first.kill()
        first.wait()
    assert len(log.of(ProcessingStarted)) == 1
    assert [s.step for s in log.of(ProcessingStepCompleted)] == [0, 1, 2]
    assert len(log.of(ProcessingStepCompleted)[-1].outputs) == 2
    assert not docker_engine.containers.list(all=True, filters={"label": "talaria.module"})
