"""The streams worker on a real broker: completion on time, decisions, crashes, sharing, config."""

import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from faust.types import TP

from infra.catalogue import (
    CATALOGUE,
    DispatchSeries,
    Notify,
    ProcessSeries,
    RulesEvaluated,
    SeriesCompleted,
    SeriesDiscarded,
    ServiceHeartbeat,
    StudyCompleted,
)
from infra.events import decode
from infra.kafka.broker import LocalBroker
from infra.settings import LogSettings
from infra.topics import Lane, Topic, topic_name
from streams.worker import PARTITIONS, read_range
from tests.conftest import settings_for
from tests.streams.harness import (
    instance,
    module_saved,
    reading,
    rule_saved,
    settings_saved,
    target_saved,
    workers,
)
from tests.support import LogReader, publish
from tests.support import reading as reading_topics

pytestmark = pytest.mark.integration

TRIGGER_S = 1.5


def routing_config() -> list:  # type: ignore[type-arg]
    return [
        settings_saved(series_complete_trigger=TRIGGER_S, study_complete_trigger=2),
        target_saved("pacs"),
        target_saved("archive"),
        module_saved("anonymizer", settings={"keep": "none", "level": 1}),
        rule_saved("ct", rule="@Modality@ == 'CT'", target=["pacs", "archive"], priority="urgent"),
        rule_saved(
            "mr-anon",
            rule="@Modality@ == 'MR'",
            action="process",
            processing_module="anonymizer",
            processing_settings={"level": 3},
        ),
    ]


def warm_up(settings: LogSettings, reader: LogReader) -> None:
    """Wait until the worker completes a series: it has joined and its partitions are live."""
    publish(settings, [instance("warmup", "warmup.1", 1, Modality="OT")])
    reader.wait(
        lambda r: any(c.study_uid == "warmup" for c in r.of(SeriesCompleted)),
        timeout_s=60,
        what="the warm-up series to complete",
    )


def of_study(reader: LogReader, kind: type, study: str) -> list:  # type: ignore[type-arg]
    return [payload for payload in reader.of(kind) if payload.study_uid == study]


def completed_by_series(reader: LogReader) -> dict[str, list[SeriesCompleted]]:
    found: dict[str, list[SeriesCompleted]] = {}
    for completed in reader.of(SeriesCompleted):
        found.setdefault(completed.series_uid, []).append(completed)
    return found


def test_three_series_complete_at_their_timeout_and_become_the_right_commands(
    log_settings: LogSettings, tmp_path: Path
) -> None:
    publish(log_settings, routing_config())
    with reading(log_settings) as reader, workers(log_settings, tmp_path):
        warm_up(log_settings, reader)
        study = "1.2.3"
        sent = [
            *(instance(study, "1.2.3.1", i, Modality="CT") for i in range(5)),
            *(instance(study, "1.2.3.2", i, Modality="MR") for i in range(3)),
            *(instance(study, "1.2.3.3", i, Modality="US") for i in range(2)),
        ]
        publish(log_settings, sent)
        last_sent = max(envelope.occurred_at.timestamp() for envelope in sent)
        reader.wait(
            lambda r: len(of_study(r, SeriesDiscarded, study)) == 1 and r.of(ProcessSeries),
            timeout_s=30,
            what="the three decisions",
        )
        time.sleep(1)  # nothing else should follow

    completions = [
        (e.payload, at)
        for e, at in reader.envelopes(SeriesCompleted)
        if e.payload.study_uid == study
    ]
    assert sorted(c.series_uid for c, _ in completions) == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    for _completed, at in completions:
        assert TRIGGER_S <= at - last_sent <= TRIGGER_S + 1.0, "completion within 1 s of timeout"
    counts = {c.series_uid: c.instance_count for c, _ in completions}
    assert counts == {"1.2.3.1": 5, "1.2.3.2": 3, "1.2.3.3": 2}
    ct = next(c for c, _ in completions if c.series_uid == "1.2.3.1")
    assert len({blob.key for blob in ct.blobs}) == 5
    assert ct.tags["Modality"] == "CT"

    dispatches = [d for d in reader.of(DispatchSeries) if d.study_uid == study]
    assert sorted(d.target for d in dispatches) == ["archive", "pacs"]
    assert all(d.lane is Lane.URGENT and d.series_uids == ["1.2.3.1"] for d in dispatches)
    assert all(len(d.inputs) == 5 for d in dispatches)
    (job,) = reader.of(ProcessSeries)
    assert job.series_uids == ["1.2.3.2"]
    assert [(s.module, s.settings) for s in job.steps] == [
        ("anonymizer", {"keep": "none", "level": 3})
    ]
    (discarded,) = of_study(reader, SeriesDiscarded, study)
    assert discarded.series_uid == "1.2.3.3"
    assert discarded.reason == "no rule matched"
    evaluated = {e.series_uid: e for e in reader.of(RulesEvaluated) if e.study_uid == study}
    assert evaluated["1.2.3.1"].matched_rules == ["ct"]
    assert evaluated["1.2.3.3"].matched_rules == []
    # The tables' changelogs, created before the worker starts (no other topic of that name).
    prefix = f"{log_settings.topic_prefix}streams-"
    topics = (
        AdminClient({"bootstrap.servers": log_settings.kafka_bootstrap})
        .list_topics(timeout=10)
        .topics
    )
    changelogs = {
        name: len(t.partitions)
        for name, t in topics.items()
        if name.startswith(prefix) and name.endswith("-changelog")
    }
    assert changelogs == {
        f"{prefix}{table}-changelog": PARTITIONS for table in ("studies", "instances", "parked")
    }


def test_a_study_rule_collects_its_series_and_acts_once_the_study_is_complete(
    log_settings: LogSettings, tmp_path: Path
) -> None:
    publish(
        log_settings,
        [
            settings_saved(series_complete_trigger=1, study_complete_trigger=30),
            target_saved("pacs"),
            rule_saved(
                "knee",
                rule="'KNEE' in @BodyPartExamined@",
                target="pacs",
                action_trigger="study",
                study_trigger_condition="received_series",
                study_trigger_series="'Axial T2' and ('Sag T1 GRE' or 'Sag T1 TSE')",
                notification_webhook="http://127.0.0.1:1/hook",
            ),
        ],
    )
    with reading(log_settings) as reader, workers(log_settings, tmp_path):
        warm_up(log_settings, reader)
        publish(
            log_settings,
            [
                instance(
                    "knee1", "knee1.1", 1, BodyPartExamined="KNEE", SeriesDescription="axial t2 fs"
                ),
                instance(
                    "knee1", "knee1.1", 2, BodyPartExamined="KNEE", SeriesDescription="axial t2 fs"
                ),
            ],
        )
        reader.wait(
            lambda r: bool(of_study(r, RulesEvaluated, "knee1")),
            timeout_s=30,
            what="first decision",
        )
        assert not reader.of(StudyCompleted), "one of the required series is still missing"
        publish(
            log_settings,
            [
                instance(
                    "knee1", "knee1.2", 1, BodyPartExamined="KNEE", SeriesDescription="Sag T1 TSE"
                )
            ],
        )
        reader.wait(lambda r: bool(r.of(DispatchSeries)), timeout_s=30, what="the study dispatch")
        time.sleep(1)

    (study,) = reader.of(StudyCompleted)
    assert study.reason == "received_series"
    assert sorted(study.series_uids) == ["knee1.1", "knee1.2"]
    assert len(study.blobs) == 3
    (dispatch,) = reader.of(DispatchSeries)
    assert sorted(dispatch.series_uids) == ["knee1.1", "knee1.2"]
    assert dispatch.completion_id == study.completion_id
    assert [n.trigger for n in reader.of(Notify)] == ["reception"]
    series_decisions = [e for e in of_study(reader, RulesEvaluated, "knee1") if e.series_uid]
    assert all([d.rule for d in e.deferred] == ["knee"] for e in series_decisions)


def test_a_worker_killed_mid_study_and_restarted_completes_every_series_once(
    log_settings: LogSettings, tmp_path: Path
) -> None:
    publish(log_settings, [settings_saved(series_complete_trigger=3), target_saved("pacs")])
    publish(log_settings, [rule_saved("all", rule="True", target="pacs")])
    study = "9.9"
    with reading(log_settings) as reader:
        with workers(log_settings, tmp_path) as (first,):
            warm_up(log_settings, reader)
            publish(log_settings, [instance(study, "9.9.1", i) for i in range(4)])
            reader.wait(lambda r: "9.9.1" in completed_by_series(r), timeout_s=30, what="series 1")
            publish(
                log_settings, [instance(study, f"9.9.{s}", i) for s in (2, 3) for i in range(4)]
            )
            time.sleep(1.5)  # folded, and offsets committed, but not yet complete
            first.kill()
        with workers(log_settings, tmp_path):
            reader.wait(
                lambda r: {"9.9.2", "9.9.3"} <= set(completed_by_series(r)),
                timeout_s=60,
                what="series 2 and 3 after the restart",
            )
            time.sleep(4)  # a second completion would show up by now

    by_series = completed_by_series(reader)
    assert {uid: len(c) for uid, c in by_series.items() if uid.startswith(study)} == {
        "9.9.1": 1,
        "9.9.2": 1,
        "9.9.3": 1,
    }
    assert all(c[0].instance_count == 4 for uid, c in by_series.items() if uid.startswith(study))
    jobs = {d.job_id for d in reader.of(DispatchSeries) if d.study_uid == study}
    assert len(jobs) == 3


def test_two_workers_share_the_partitions_and_complete_each_series_once(
    kafka_broker: LocalBroker, tmp_path: Path
) -> None:
    settings = settings_for(kafka_broker)
    publish(settings, [settings_saved(series_complete_trigger=1), target_saved("pacs")])
    publish(settings, [rule_saved("all", rule="True", target="pacs")])
    studies = [f"5.{n}" for n in range(12)]
    with reading(settings) as reader, workers(settings, tmp_path, count=2):
        warm_up(settings, reader)
        time.sleep(3)  # both members have joined
        publish(settings, [instance(s, f"{s}.1", i) for s in studies for i in range(3)])
        reader.wait(
            lambda r: {f"{s}.1" for s in studies} <= set(completed_by_series(r)),
            timeout_s=60,
            what="every series complete",
        )
        time.sleep(2)

    by_series = completed_by_series(reader)
    assert all(len(by_series[f"{s}.1"]) == 1 for s in studies)
    sources = {
        e.source for e, _ in reader.envelopes(SeriesCompleted) if e.payload.study_uid in studies
    }
    assert len(sources) == 2, "both workers completed series"
    with reading_topics(settings, [Topic.HEARTBEATS]) as log:
        log.wait(
            lambda r: len({b.instance for b in r.of(ServiceHeartbeat)}) == 2,
            timeout_s=10,
            what="a heartbeat from each worker",
        )
        assert {b.service for b in log.of(ServiceHeartbeat)} == {"streams"}


def test_a_config_change_between_two_series_changes_the_second_decision(
    log_settings: LogSettings, tmp_path: Path
) -> None:
    publish(
        log_settings,
        [
            settings_saved(series_complete_trigger=1),
            target_saved("old-pacs"),
            target_saved("new-pacs"),
            rule_saved("ct", rule="@Modality@ == 'CT'", target="old-pacs"),
        ],
    )
    with reading(log_settings) as reader, workers(log_settings, tmp_path):
        warm_up(log_settings, reader)
        publish(log_settings, [instance("7.1", "7.1.1", 1, Modality="CT")])
        reader.wait(lambda r: len(r.of(DispatchSeries)) == 1, timeout_s=30, what="first dispatch")
        publish(log_settings, [rule_saved("ct", rule="@Modality@ == 'CT'", target="new-pacs")])
        publish(log_settings, [instance("7.1", "7.1.2", 1, Modality="CT")])
        reader.wait(lambda r: len(r.of(DispatchSeries)) == 2, timeout_s=30, what="second dispatch")

    targets = {d.series_uids[0]: d.target for d in reader.of(DispatchSeries)}
    assert targets == {"7.1.1": "old-pacs", "7.1.2": "new-pacs"}
    assert topic_name(Topic.SERIES, prefix=log_settings.topic_prefix)


def test_records_the_consumer_skipped_are_read_directly(log_settings: LogSettings) -> None:
    """What the fold reads when Faust's consumer moved past records without delivering them."""
    sent = [instance("gap-study", "gap.1", number) for number in range(6)]
    publish(log_settings, sent)
    topic = topic_name(Topic.INSTANCES, prefix=log_settings.topic_prefix)
    consumer = Consumer({"bootstrap.servers": log_settings.kafka_bootstrap, "group.id": "gaps"})
    ends = {
        partition: consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
        for partition in range(PARTITIONS)
    }
    partition = next(p for p, end in ends.items() if end)
    assert ends[partition] == len(sent)

    records = read_range(consumer, TP(topic, partition), 1, 4)
    consumer.close()

    assert [record.offset for record in records] == [1, 2, 3]
    decoded = [decode(record.value, record.headers, CATALOGUE).payload for record in records]
    assert decoded == [envelope.payload for envelope in sent[1:4]]
