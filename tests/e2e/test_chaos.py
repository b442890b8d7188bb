"""Chaos: series stream in from several DCMTK senders while services are SIGKILLed and restarted.

`talaria up` runs against a broker of its own that this test starts (TALARIA_KAFKA_BOOTSTRAP), so
the broker can be killed and restarted too; every other service is killed by its pid and
restarted by the supervisor of `talaria up`. One rule routes the CT series to a DICOM target
(DCMTK storescp, writing every object it receives to a file of its own), which is taken down for a
while; another runs every third series (PT) through a processing module (a busybox container
copying its inputs, built locally) and routes its output, the same instances, to that target.
At the end:

- every instance a sender was told was stored (a Success store response in `storescu -v`'s output)
  is at the target; a series whose send failed in part is sent again (only what was not stored),
  as a modality would;
- duplicate deliveries (at-least-once) are counted and reported, not forbidden;
- every job a dispatcher started has its `DispatchSucceeded` on the log, and every processing
  job started finished its step without failing;
- the projections agree with the log: the series and their instance counts in the archive API
  equal the `InstanceReceived` events read from the instances topic.

Scaled to run in CI on 2 cores in 2-3 minutes: 100 series of 3-5 small (64x64) CT instances
from 4 concurrent senders, spread over the first 48 s, a kill every 4 s for the first 60 s
(each victim at least once; a broker restart takes a few seconds more), and a target outage of
a minute (the retry backoff is shortened to match). The victims are the broker, the receiver,
the streams worker, the processor, the dispatcher and the UI (with its projector).

It found that after the broker itself was killed and restarted, the streams worker could commit
its source offsets past instances whose study record never reached its table changelog (Faust's
buffer flush gives up after 0.1 s without a send), so their series was never completed; the
worker now drains that buffer before each commit. It then found that Faust's consumer could move
past records without delivering them (after a broker restart during a rebalance) and commit past
them as a gap: the fold now reads and folds them itself; and that a dispatcher killed after the
target confirmed a job but before its `DispatchSucceeded` was on the log left the job started
forever: the redelivered command now reports the stored confirmation.

`make test` runs it after the rest of the suite, in a pytest run of its own; `make chaos` runs it
alone. It prints its seed first and its figures last (a line starting "chaos figures"), shown
without -s; CHAOS_SEED=N repeats a run's series sizes and order of victims (not its timing). When an
acknowledged instance never reaches the target, the failure traces it through the log (received,
completed, which jobs, how they ended) and quotes the services' errors.
"""

import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from infra.catalogue import (
    DispatchSeries,
    DispatchStarted,
    DispatchSucceeded,
    InstanceReceived,
    ProcessingFailed,
    ProcessingStarted,
    ProcessingStepCompleted,
    ProcessSeries,
    SeriesCompleted,
)
from infra.kafka.broker import LocalBroker
from infra.settings import LogSettings
from infra.supervisor import read_states
from infra.topics import Topic
from projections.projector import PROJECTED_TOPICS
from tests.conftest import start_broker
from tests.e2e.stack import Stack, logged_in, talaria_up
from tests.executors.dispatch.conftest import storescp_command
from tests.executors.images import busybox_module_image, docker_client
from tests.ingest.dicom_files import write_study
from tests.support import DCMTK, LogReader, free_port, reading, wait_for, wait_until_listening

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.chaos]

SERIES = 100
SENDERS = 4
KILL_EVERY_S = 4.0
CHAOS_FOR_S = 60.0
SEND_FOR_S = 48.0  # the series stream in through most of the chaos, not in a burst before it
OUTAGE_FROM_S, OUTAGE_UNTIL_S = 10.0, 70.0
SERVICES = ("receiver", "streams", "processor", "dispatcher", "ui")
PROCESSED_EVERY = 3  # every third series is PT and goes through the module
BROKER = "broker"


@dataclass
class Sent:
    """What the senders were told was stored, and how hard it was."""

    stored: dict[str, str] = field(default_factory=dict)  # SOP instance UID -> series UID
    attempts: int = 0
    resends: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def stored_by_storescu(port: int, files: list[Path]) -> set[Path]:
    """The files of one `storescu` run that got a Success store response."""
    result = subprocess.run(
        [f"{DCMTK}/storescu", "-v", "-to", "30", "-aec", "TALARIA", "127.0.0.1", str(port)]
        + [str(path) for path in files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    stored, current = set(), None
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith("I: Sending file: "):
            current = Path(line.removeprefix("I: Sending file: "))
        elif "Received Store Response (Success)" in line and current is not None:
            stored.add(current)
    return stored


def send_until_stored(
    port: int, series: list[list[Path]], sent: Sent, uids: dict[Path, str], began: float
) -> None:
    """One sender: its series spread evenly over SEND_FOR_S, each sent again (what is missing)
    until every instance was stored."""
    for n, files in enumerate(series):
        time.sleep(max(0.0, began + n * SEND_FOR_S / len(series) - time.monotonic()))
        missing = list(files)
        for attempt in range(60):
            with sent.lock:
                sent.attempts += 1
                sent.resends += attempt > 0
            done = stored_by_storescu(port, missing)
            with sent.lock:
                for path in done:
                    sent.stored[uids[path]] = str(path.parent)
            missing = [path for path in missing if path not in done]
            if not missing:
                break
            time.sleep(1.0)
        assert not missing, f"{len(missing)} instances never stored"


@dataclass
class Chaos:
    """Kills a service every few seconds, every one in turn in a random order per round (so each
    is killed at least once); the broker is restarted here."""

    stack: Stack
    broker: LocalBroker
    rng: random.Random
    kills: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def victims(self) -> Iterator[str]:
        while True:
            yield from self.rng.sample([*SERVICES, BROKER], k=len(SERVICES) + 1)

    def run(self) -> None:
        victims = self.victims()
        while not self.stop.wait(KILL_EVERY_S):
            victim = next(victims)
            if victim == BROKER:
                self.broker.kill()
                self.kills[victim] += 1
                time.sleep(2)
                self.broker.start(timeout_s=120)
                continue
            pids = {s.name: s.pid for s in read_states(self.stack.data_dir / "run")}
            pid = pids.get(victim)
            if pid is None:
                continue  # being restarted after the last kill: next round
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills[victim] += 1


@contextmanager
def target_with_outage(port: int, folder: Path, began: float) -> Iterator[list[float]]:
    """storescp (a file per object received, +uf), down from OUTAGE_FROM_S to OUTAGE_UNTIL_S."""
    command = storescp_command(port, folder, "+uf")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    down: list[float] = []
    stop = threading.Event()

    def outage() -> None:
        nonlocal process
        if stop.wait(max(0.0, began + OUTAGE_FROM_S - time.monotonic())):
            return
        process.terminate()
        process.wait()
        down.append(time.monotonic())
        if stop.wait(max(0.0, began + OUTAGE_UNTIL_S - time.monotonic())):
            return
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        down.append(time.monotonic())

    thread = threading.Thread(target=outage)
    thread.start()
    try:
        wait_until_listening(port, process, timeout_s=30)
        yield down
    finally:
        stop.set()
        thread.join()
        process.terminate()
        process.wait()


class Target:
    """What the target received: SOP instance UID per file, read once per file."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._seen: dict[Path, str] = {}

    def received(self) -> Counter[str]:
        for path in self._folder.iterdir():
            if path not in self._seen and path.is_file() and not path.name.startswith("."):
                try:
                    self._seen[path] = dcmread(path, stop_before_pixels=True).SOPInstanceUID
                except (OSError, ValueError, EOFError, AttributeError, InvalidDicomError):
                    continue  # being written: read again at the next look
        return Counter(self._seen.values())


def archive_counts(client: httpx.Client) -> dict[str, int]:
    rows = client.get("/api/archive", params={"limit": 500}).json()["rows"]
    return {row["series_uid"]: row["instance_count"] for row in rows}


def unfinished_jobs(log: LogReader) -> set[str]:
    """Jobs a dispatcher started that have no success on the log."""
    started = {fact.job_id for fact in log.of(DispatchStarted)}
    return started - {fact.job_id for fact in log.of(DispatchSucceeded)}


def logged_counts(log: LogReader) -> dict[str, int]:
    return dict(Counter(fact.series_uid for fact in log.of(InstanceReceived)))


def unfinished_processing(log: LogReader) -> set[str]:
    """Processing jobs started that completed no step."""
    started = {fact.job_id for fact in log.of(ProcessingStarted)}
    return started - {fact.job_id for fact in log.of(ProcessingStepCompleted)}


def trace(stack: Stack, lost: set[str]) -> str:
    """Where each lost instance got to on the log, and the services' errors and warnings."""
    with reading(LogSettings(kafka_bootstrap=stack.bootstrap), PROJECTED_TOPICS) as log:
        read = -1
        while read != len(log.seen):  # the topics are read to their end once nothing new comes
            read = len(log.seen)
            time.sleep(2)
        received = {fact.sop_uid: fact for fact in log.of(InstanceReceived)}
        ends = [
            (type(fact).__name__, fact.job_id)
            for fact in [*log.of(DispatchSucceeded), *log.of(ProcessingFailed)]
        ]
        lines = []
        for sop_uid in sorted(lost):
            fact = received.get(sop_uid)
            if fact is None:
                lines.append(f"{sop_uid}: no InstanceReceived")
                continue
            key = fact.blob.key
            completions = {
                completed.completion_id: completed.instance_count
                for completed in log.of(SeriesCompleted)
                if any(blob.key == key for blob in completed.blobs)
            }
            jobs = {
                command.job_id
                for command in log.of(ProcessSeries) + log.of(DispatchSeries)
                if command.completion_id in completions
            }
            lines.append(
                f"{sop_uid} of series {fact.series_uid}: completions {completions}, jobs "
                f"{sorted(jobs)}, ended {sorted(end for end in ends if end[1] in jobs)}"
            )
    for service in (*SERVICES, "notifier"):
        noted = [
            line
            for line in stack.service_log(service).splitlines()
            if '"level": "error"' in line or '"level": "warning"' in line or "Traceback" in line
        ]
        lines += [f"{service}: {line}" for line in noted[-15:]]
    return "\n".join(lines)


@pytest.fixture
def copy_module() -> str:
    """The busybox module image (Docker started first, so that `talaria up` runs the processor)."""
    return busybox_module_image(docker_client())


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    broker = start_broker(tmp_path / "kafka")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.timeout(900)  # 5 minutes at a load of 15 on 2 cores; the default 300 s is too tight
def test_killing_services_and_the_broker_loses_no_stored_instance(
    copy_module: str, own_broker: LocalBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(1 << 30))
    with capsys.disabled():
        print(f"\nchaos seed {seed} (CHAOS_SEED={seed} repeats this run)")
    rng = random.Random(seed)
    series = [
        write_study(
            tmp_path / "send" / f"{n:03d}",
            series=1,
            instances=rng.randint(3, 5),
            modality="PT" if n % PROCESSED_EVERY == 0 else "CT",
        )
        for n in range(SERIES)
    ]
    uids = {
        path: dcmread(path, stop_before_pixels=True).SOPInstanceUID for s in series for path in s
    }
    port, received = free_port(), tmp_path / "pacs"
    received.mkdir()
    config = tmp_path / "routing.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "settings": {"series_complete_trigger": 2},
                "targets": {
                    "pacs": {
                        "target_type": "dicom",
                        "ip": "127.0.0.1",
                        "port": port,
                        "aet_target": "PACS",
                    }
                },
                "modules": {
                    "copy": {"docker_tag": copy_module, "environment": {"BEHAVIOUR": "copy"}}
                },
                "rules": {
                    "ct": {"rule": "@Modality@ == 'CT'", "action": "route", "target": "pacs"},
                    "pt": {
                        "rule": "@Modality@ == 'PT'",
                        "action": "both",
                        "processing_module": "copy",
                        "target": "pacs",
                    },
                },
            }
        )
    )
    settings = {
        "TALARIA_KAFKA_BOOTSTRAP": own_broker.layout.bootstrap,
        "TALARIA_CONSUMER_SESSION_TIMEOUT_MS": "6000",
        "TALARIA_RETRY_FIRST_DELAY_S": "1",
        "TALARIA_RETRY_MAX_DELAY_S": "5",
        "TALARIA_RETRY_MAX_ATTEMPTS": "100",
        "TALARIA_PUBLISH_TIMEOUT_S": "20",
    }
    with talaria_up(tmp_path / "stack", **settings) as stack:
        applied = stack.talaria("config", "apply", str(config))
        assert applied.returncode == 0, applied.stderr
        began = time.monotonic()
        sent = Sent()
        chaos = Chaos(stack=stack, broker=own_broker, rng=rng)
        with target_with_outage(port, received, began) as outage:
            killer = threading.Thread(target=chaos.run)
            killer.start()
            senders = [
                threading.Thread(
                    target=send_until_stored,
                    args=(stack.dicom_port, series[n::SENDERS], sent, uids, began),
                )
                for n in range(SENDERS)
            ]
            try:
                for sender in senders:
                    sender.start()
                for sender in senders:
                    sender.join()
                sending_s = time.monotonic() - began
                chaos.stop.wait(max(0.0, began + CHAOS_FOR_S - time.monotonic()))
            finally:
                chaos.stop.set()
                killer.join()
            if own_broker.pid() is None:
                own_broker.start(timeout_s=120)
            target = Target(received)
            try:
                wait_for(
                    lambda: set(sent.stored) <= set(target.received()),
                    timeout_s=150,
                    what="every stored instance at the target",
                )
            except AssertionError as late:
                lost = set(sent.stored) - set(target.received())
                folders = sorted({sent.stored[uid] for uid in lost})
                raise AssertionError(
                    f"{late}: {len(lost)} missing, of {folders}\n{trace(stack, lost)}"
                ) from None
            delivered_s = time.monotonic() - began
            assert len(outage) == 2, "the target outage happened"

        at_target = target.received()
        duplicates = sum(count - 1 for count in at_target.values())
        topics = LogSettings(kafka_bootstrap=own_broker.layout.bootstrap)
        client = logged_in(stack)
        with reading(topics, [Topic.INSTANCES, Topic.JOBS]) as log:
            wait_for(lambda: len(logged_counts(log)) == SERIES, timeout_s=60, what="the log")
            wait_for(
                lambda: archive_counts(client) == logged_counts(log),
                timeout_s=120,
                what="the archive to agree with the instances topic",
            )
            wait_for(lambda: not unfinished_jobs(log), timeout_s=60, what="every job to succeed")
            wait_for(
                lambda: not unfinished_processing(log),
                timeout_s=60,
                what="every processing job to finish",
            )
            routed = Counter(success.job_id for success in log.of(DispatchSucceeded))
            processed = Counter(step.job_id for step in log.of(ProcessingStepCompleted))
            failed = [(failure.job_id, failure.reason) for failure in log.of(ProcessingFailed)]
        client.close()

    with capsys.disabled():
        print(
            f"\nchaos figures (seed {seed}): {len(sent.stored)} of {len(uids)} instances "
            f"acknowledged in {SERIES} series ({sent.attempts} storescu runs, {sent.resends} "
            f"resends); {len(at_target)} delivered, {sum(at_target.values())} objects at the "
            f"target, {duplicates} duplicate deliveries; "
            f"kills {dict(sorted(chaos.kills.items()))}; "
            f"target down {outage[1] - outage[0]:.0f} s; {sum(routed.values())} dispatches "
            f"succeeded for {len(routed)} jobs; {sum(processed.values())} module runs completed "
            f"for {len(processed)} processing jobs; sending took {sending_s:.0f} s, all delivered "
            f"{delivered_s:.0f} s after the start"
        )
    assert set(sent.stored) == set(uids.values()), "every instance was acknowledged"
    assert set(chaos.kills) == {*SERVICES, BROKER}, "every victim was killed"
    assert not failed, f"processing jobs failed: {failed}"
