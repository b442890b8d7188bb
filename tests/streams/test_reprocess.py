"""Reprocessing: staff fix a rule after the fact and run the decision again on stored series."""

from pathlib import Path

import pytest

from infra.blobstore import FolderBlobStore, parse_key
from infra.catalogue import (
    DispatchSeries,
    ReprocessRejected,
    ReprocessRequested,
    SeriesCompleted,
)
from infra.events import Envelope
from infra.settings import LogSettings
from streams.config import Configuration, fold_all
from streams.reprocess import Reprocessor, completion_key
from tests.streams.harness import (
    instance,
    reading,
    rule_saved,
    settings_saved,
    target_saved,
    workers,
)
from tests.support import publish


def config(*events: Envelope) -> Configuration:
    return fold_all(event.payload for event in events)  # type: ignore[misc]


class NoProducer:
    """`decide` publishes nothing; these stories look at what it returns."""


def stored(store: FolderBlobStore, completed: SeriesCompleted) -> None:
    for blob in completed.blobs:
        store.put(parse_key(blob.key), b"DICM")
    store.put(
        completion_key(completed.study_uid, completed.series_uid),
        completed.model_dump_json().encode(),
    )


def completion(series: str = "1.2.3") -> SeriesCompleted:
    first = instance("1.2", series, 1, Modality="CT").payload
    second = instance("1.2", series, 2, Modality="CT").payload
    return SeriesCompleted(
        study_uid="1.2",
        series_uid=series,
        completion_id=f"c-{series}",
        instance_count=2,
        blobs=[first.blob, second.blob],  # type: ignore[attr-defined]
        tags={"Modality": "CT", "SeriesInstanceUID": series},
    )


def request(*, series: str | None = "1.2.3", rule: str | None = None) -> Envelope:
    return Envelope(
        payload=ReprocessRequested(study_uid="1.2", series_uid=series, rule=rule),
        source="ui",
        subject="1.2",
        actor="dana",
    )


@pytest.fixture
def store(tmp_path: Path) -> FolderBlobStore:
    return FolderBlobStore(tmp_path / "blobs", min_free_bytes=0)


def reprocessor(store: FolderBlobStore, *events: Envelope) -> Reprocessor:
    return Reprocessor(
        store=store,
        producer=NoProducer(),  # type: ignore[arg-type]
        configuration=lambda: config(*events),
    )


ROUTING = (
    target_saved("pacs"),
    target_saved("archive"),
    rule_saved("ct", rule="@Modality@ == 'CT'", target="archive"),
    rule_saved("research", rule="False", target="pacs"),
)


def test_todays_rules_decide_again_under_new_job_ids(store: FolderBlobStore) -> None:
    stored(store, completion())
    cause = request()
    decided = reprocessor(store, *ROUTING).decide(cause, cause.payload)  # type: ignore[arg-type]
    (dispatch,) = [p for p in decided if isinstance(p, DispatchSeries)]
    assert dispatch.target == "archive"
    assert dispatch.completion_id.startswith("c-1.2.3~")
    again = request()
    (second,) = [
        p
        for p in reprocessor(store, *ROUTING).decide(again, again.payload)  # type: ignore[arg-type]
        if isinstance(p, DispatchSeries)
    ]
    assert second.job_id != dispatch.job_id


def test_a_named_rule_is_forced_even_if_it_would_not_match(store: FolderBlobStore) -> None:
    stored(store, completion())
    cause = request(rule="research")
    decided = reprocessor(store, *ROUTING).decide(cause, cause.payload)  # type: ignore[arg-type]
    assert [p.target for p in decided if isinstance(p, DispatchSeries)] == ["pacs"]


def test_a_whole_study_is_reprocessed_series_by_series(store: FolderBlobStore) -> None:
    stored(store, completion("1.2.3"))
    stored(store, completion("1.2.4"))
    cause = request(series=None)
    decided = reprocessor(store, *ROUTING).decide(cause, cause.payload)  # type: ignore[arg-type]
    assert sorted(p.series_uids[0] for p in decided if isinstance(p, DispatchSeries)) == [
        "1.2.3",
        "1.2.4",
    ]


def test_purged_unknown_and_misnamed_requests_are_rejected_with_a_reason(
    store: FolderBlobStore,
) -> None:
    purged = completion()
    stored(store, purged)
    store.delete(parse_key(purged.blobs[0].key))
    for cause, reason in [
        (request(), "no longer stored"),
        (request(series="9.9"), "no completed series"),
        (request(rule="nonesuch"), "no rule named"),
    ]:
        (rejected,) = reprocessor(store, *ROUTING).decide(cause, cause.payload)  # type: ignore[arg-type]
        assert isinstance(rejected, ReprocessRejected)
        assert reason in rejected.reason


@pytest.mark.integration
def test_the_worker_reprocesses_a_completed_series_after_a_rule_fix(
    log_settings: LogSettings, tmp_path: Path
) -> None:
    sent = [instance("5.5", "5.5.1", i, Modality="CT") for i in range(2)]
    store = FolderBlobStore(tmp_path / "data" / "blobs", min_free_bytes=0)
    for envelope in sent:
        store.put(parse_key(envelope.payload.blob.key), b"DICM")  # type: ignore[attr-defined]
    publish(
        log_settings,
        [
            settings_saved(series_complete_trigger=1),
            target_saved("pacs"),
            target_saved("archive"),
            rule_saved("ct", rule="@Modality@ == 'CT'", target="pacs"),
        ],
    )
    with reading(log_settings) as log, workers(log_settings, tmp_path):
        publish(log_settings, sent)
        log.wait(lambda r: r.of(DispatchSeries), timeout_s=90, what="the first dispatch")
        log.wait(
            lambda r: store.exists(completion_key("5.5", "5.5.1")),
            timeout_s=30,
            what="the completion record",
        )
        publish(log_settings, [rule_saved("ct", rule="@Modality@ == 'CT'", target="archive")])
        publish(
            log_settings,
            [Envelope(payload=ReprocessRequested(study_uid="5.5"), source="ui", subject="5.5")],
        )
        log.wait(lambda r: len(r.of(DispatchSeries)) == 2, timeout_s=60, what="the new dispatch")
    first, second = log.of(DispatchSeries)
    assert (first.target, second.target) == ("pacs", "archive")
    assert first.job_id != second.job_id
