"""The projector on a real broker and chDB: a recorded story becomes exactly the expected rows,
and replays, crashes and rebuilds change nothing."""

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from infra.catalogue import InstanceReceived, QueueSuspended
from infra.log import EventProducer
from infra.settings import LogSettings
from projections.errors import LagUnknown, StoreUnavailable
from projections.projector import Lag, Projector, broker_group, current_generation
from projections.rebuild import rebuild
from projections.store import ClickHouse
from projections.writer import BatchWriter, Record
from tests.projections.conftest import open_store
from tests.projections.story import (
    CT_SERIES,
    JOB,
    MR_SERIES,
    MR_STUDY,
    SR_SERIES,
    STUDY,
    at,
    event,
    instance,
    row,
    story,
    tables,
)
from tests.support import wait_for

pytestmark = pytest.mark.integration


def caught_up(settings: LogSettings, generation: int) -> bool:
    lag = Lag(settings, group=broker_group(settings, generation))
    try:
        return lag.behind() == 0
    except LagUnknown:
        return False
    finally:
        lag.close()


@contextmanager
def projecting(
    settings: LogSettings, store: ClickHouse, producer: EventProducer, **options: int
) -> Iterator[Projector]:
    projector = Projector(settings, store=store, producer=producer, **options)
    projector.start()
    try:
        yield projector
    finally:
        projector.stop()


def project_all(
    settings: LogSettings, store: ClickHouse, producer: EventProducer, **options: int
) -> None:
    """Run a projector until its group has stored everything on the log, then stop it."""
    with projecting(settings, store, producer, **options) as projector:
        wait_for(
            lambda: caught_up(settings, options.get("generation", projector.generation)),
            timeout_s=60,
            what="the projector to catch up",
        )


def test_a_recorded_story_becomes_exactly_the_expected_rows(
    log_settings: LogSettings, producer: EventProducer, store: ClickHouse
) -> None:
    events = story()
    producer.publish_all(events)
    project_all(log_settings, store, producer)

    ct = row(store, "series", "series_uid = {s:String}", s=CT_SERIES)
    assert ct["study_uid"] == STUDY
    assert (ct["patient_name"], ct["patient_id"], ct["accession_number"]) == (
        "DOE^JANE",
        "P001",
        "ACC1",
    )
    assert (ct["modality"], ct["sender_aet"], ct["receiver_aet"]) == ("CT", "SCANNER1", "TALARIA")
    assert ct["instance_count"] == 3
    assert ct["first_received_at"] == at(1).replace(tzinfo=None)
    assert ct["completed_at"] == at(3).replace(tzinfo=None)
    assert ct["matched_rules"] == ["ct-to-pacs"]
    assert ct["jobs"] == {f"{JOB}/pacs": "succeeded"}
    assert ct["status"] == "done"
    assert ct["updated_at"] == at(5.5).replace(tzinfo=None)  # the dispatch's success

    sr = row(store, "series", "series_uid = {s:String}", s=SR_SERIES)
    assert (sr["status"], sr["instance_count"], sr["discard_reason"]) == (
        "discarded",
        2,
        "no rule matched",
    )
    assert sr["matched_rules"] == []
    mr = row(store, "series", "series_uid = {s:String}", s=MR_SERIES)
    assert (mr["status"], mr["deferred_rules"]) == ("pending_study", ["mr-study"])

    job = row(store, "jobs", "job_id = {j:String}", j=JOB)
    assert (job["kind"], job["target"], job["rule"], job["series_uids"]) == (
        "dispatch",
        "pacs",
        "ct-to-pacs",
        [CT_SERIES],
    )
    assert (job["state"], job["attempts"], job["error"], job["next_retry_at"]) == (
        "succeeded",
        2,
        "",
        None,
    )
    assert json.loads(job["result"]) == {"confirmed": 3, "warnings": 0}
    assert (job["queued_at"], job["started_at"], job["finished_at"]) == tuple(
        at(m).replace(tzinfo=None) for m in (3.02, 3.5, 5.5)
    )

    pending = row(store, "pending_studies", "study_uid = {s:String}", s=MR_STUDY)
    assert (pending["rule"], pending["status"], pending["series_uids"]) == (
        "mr-study",
        "pending",
        [MR_SERIES],
    )
    assert (pending["condition"], pending["required_series"]) == ("received_series", "T2")

    audit = store.select(
        "SELECT type, actor, name, after FROM {db}.audit FINAL ORDER BY occurred_at"
    )
    assert [r[:3] for r in audit.rows] == [
        ("RuleSaved", "alice", "ct-to-pacs"),
        ("JobRetryRequested", "bob", "story"),
    ]
    assert json.loads(audit.rows[0][3]) == {"rule": "@Modality@ == 'CT'"}

    stored = store.select("SELECT event_id FROM {db}.events FINAL ORDER BY event_id").rows
    assert [r[0] for r in stored] == sorted(e.event_id for e in events)


def test_replaying_the_whole_log_again_changes_nothing(
    log_settings: LogSettings, producer: EventProducer, store: ClickHouse
) -> None:
    producer.publish_all(story())
    project_all(log_settings, store, producer)
    before = tables(store)
    # A second consumer group reads the log from offset 0 into the same tables.
    project_all(log_settings, store, producer, generation=77)
    assert tables(store) == before
    assert store.select("SELECT count() FROM {db}.events").rows[0][0] >= len(story())


class FailingAfter:
    """A store that loses its connection after `inserts` successful inserts."""

    def __init__(self, store: ClickHouse, inserts: int) -> None:
        self._store = store
        self._left = inserts

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def insert(self, table: str, rows: object, *, columns: object) -> None:
        if self._left == 0:
            raise StoreUnavailable("connection lost mid-batch")
        self._left -= 1
        self._store.insert(table, rows, columns=columns)  # type: ignore[arg-type]


@pytest.mark.parametrize("inserts_before_crash", [1, 2, 3, 4])
def test_a_batch_half_written_before_a_crash_and_applied_again_leaves_the_same_rows(
    chdb_folder: Path, inserts_before_crash: int
) -> None:
    records = [
        Record(envelope=e, topic="log", partition=0, offset=n) for n, e in enumerate(story())
    ]
    clean = open_store(chdb_folder)
    crashed = open_store(chdb_folder)
    try:
        BatchWriter(clean).apply(records[:8])
        BatchWriter(clean).apply(records[8:])
        BatchWriter(crashed).apply(records[:8])
        with pytest.raises(StoreUnavailable):
            BatchWriter(FailingAfter(crashed, inserts_before_crash)).apply(records[8:])  # type: ignore[arg-type]
        BatchWriter(crashed).apply(records[5:])  # restarted: an empty cache, redelivered tail
        assert tables(crashed) == tables(clean)
    finally:
        for store in (clean, crashed):
            store.command("DROP DATABASE {db}")


def worker(settings: LogSettings, folder: Path, mode: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.projections.projector_worker",
            settings.kafka_bootstrap,
            settings.topic_prefix,
            str(folder),
            "killed",
            mode,
            *extra,
        ],
        cwd=Path(__file__).parents[2],
    )


def stored(settings: LogSettings) -> int:
    """How many events the generation-0 group has committed."""
    lag = Lag(settings, group=broker_group(settings, 0))
    try:
        ends = lag.ends()
        return sum(high - low for low, high in ends.values()) - lag.behind(ends)
    finally:
        lag.close()


def many_series(count: int) -> list:  # type: ignore[type-arg]
    """`count` series of four instances each, spread over many studies."""
    return [
        instance(f"9.{n // 10}", f"9.{n // 10}.{n}", i, {"Modality": "CT"}, n / 100 + i / 1000)
        for n in range(count)
        for i in range(4)
    ]


def readable(lag: Lag) -> bool:
    try:
        lag.ends()
    except LagUnknown:
        return False
    return True


def test_the_lag_is_every_event_a_group_has_not_stored(
    log_settings: LogSettings, producer: EventProducer
) -> None:
    events = many_series(5)
    producer.publish_all(events)
    lag = Lag(log_settings, group="never-consumed")
    try:
        wait_for(lambda: readable(lag), timeout_s=30, what="every partition has a leader")
        ends = lag.ends()
        assert len(ends) == len(lag.partitions())
        assert {low for low, _high in ends.values()} == {0}
        assert sum(high for _low, high in ends.values()) == len(events)
        assert lag.behind() == len(events)
    finally:
        lag.close()


def test_a_projector_killed_mid_batch_and_restarted_ends_with_the_same_tables(
    log_settings: LogSettings, producer: EventProducer, store: ClickHouse, tmp_path: Path
) -> None:
    events = story() + many_series(600)
    producer.publish_all(events)
    folder = tmp_path / "chdb"
    total = len(events)
    running = worker(log_settings, folder, "run")
    try:
        wait_for(lambda: stored(log_settings) >= total // 3, timeout_s=60, what="a third stored")
    finally:
        running.kill()  # SIGKILL: mid-batch, between inserts, or between insert and commit
        running.wait()
    assert not caught_up(log_settings, 0), "the kill must land before the end of the log"
    last = worker(log_settings, folder, "run")
    try:
        wait_for(lambda: caught_up(log_settings, 0), timeout_s=90, what="the restarted worker")
    finally:
        last.terminate()
        last.wait(timeout=30)
    dump = worker(log_settings, folder, "dump", str(tmp_path / "killed.json"))
    assert dump.wait(timeout=60) == 0

    # The reference: the same log projected in one uninterrupted run.
    project_all(log_settings, store, producer, generation=5)
    expected = json.loads(json.dumps(tables(store), default=str, sort_keys=True))
    assert json.loads((tmp_path / "killed.json").read_text()) == expected
    assert len(expected["series"]) == 603


def test_a_rebuild_replays_the_log_into_tables_equal_to_the_live_ones(
    log_settings: LogSettings, producer: EventProducer, store: ClickHouse
) -> None:
    producer.publish_all(story())
    seen: list[tuple[int, int]] = []
    with projecting(log_settings, store, producer) as live:
        wait_for(lambda: caught_up(log_settings, 0), timeout_s=60, what="the live projector")
        before = tables(store)

        report = rebuild(
            log_settings, store=store, producer=producer, progress=lambda d, t: seen.append((d, t))
        )

        assert report.generation == current_generation(store) == 1
        assert tables(store) == before
        assert seen[-1] == (len(story()), len(story()))
        # The live projector follows the new generation and keeps the tables current.
        producer.publish(event(QueueSuspended(queue="dispatch"), 9, actor="carol"))
        wait_for(lambda: live.generation == 1, timeout_s=30, what="the new generation")
        wait_for(
            lambda: store.select("SELECT count() FROM {db}.audit FINAL").rows[0][0] == 3,
            timeout_s=30,
            what="the event after the rebuild",
        )
    assert store.select(
        "SELECT count() FROM system.databases WHERE name = {n:String}",
        {"n": f"{store.database}_rebuild"},
    ).rows == [(0,)]


def test_series_events_are_folded_whatever_order_the_partitions_interleave(
    chdb_folder: Path,
) -> None:
    uid = str(uuid.uuid4().int)
    received = [instance("5.1", f"5.1.{uid}", i, {"Modality": "US"}, i) for i in range(3)]
    forward = [
        Record(envelope=e, topic="instances", partition=0, offset=n) for n, e in enumerate(received)
    ]
    assert isinstance(received[0].payload, InstanceReceived)
    one = open_store(chdb_folder)
    other = open_store(chdb_folder)
    try:
        BatchWriter(one).apply(forward)
        # Same events, seen as if from three partitions, in reverse.
        BatchWriter(other).apply(
            [
                Record(envelope=r.envelope, topic="instances", partition=r.offset, offset=0)
                for r in forward
            ][::-1]
        )
        rows = [
            {k: v for k, v in found.items() if k not in ("positions", "version")}
            for db in (one, other)
            for found in db.select("SELECT * FROM {db}.series FINAL").dicts()
        ]
        assert rows[0] == rows[1]
        assert rows[0]["instance_count"] == 3
    finally:
        for store in (one, other):
            store.command("DROP DATABASE {db}")
