"""What may be purged, decided from the log alone: done series after retention, nothing in use."""

import random
from datetime import timedelta

from executors.cleanup.ledger import Ledger, plan_purges
from infra.catalogue import BlobsPurged, JobRetryRequested, StudyCompleted
from infra.events import Envelope
from tests.executors.cleanup.story import DAY, NOW, Series, at, reference

RETENTION = timedelta(days=3)


def ledger_of(*events: Envelope) -> Ledger:
    ledger = Ledger()
    for event in events:
        ledger.apply(event)
    return ledger


def planned(ledger: Ledger, **options: bool) -> list[str]:
    return [
        purge.series_uid for purge in plan_purges(ledger, now=NOW, retention=RETENTION, **options)
    ]


def test_done_and_discarded_series_go_after_retention_pending_and_failed_ones_stay() -> None:
    sent, dropped, refused, stuck, fresh = (Series.received(n) for n in range(1, 6))
    ledger = ledger_of(
        *sent.dispatched(NOW - 4 * DAY),
        *dropped.discarded(NOW - 5 * DAY),
        *refused.dispatched(NOW - 4 * DAY - DAY / 2, outcome="failed"),
        *stuck.dispatched(NOW - 4 * DAY, outcome="retrying"),
        *fresh.dispatched(NOW - 2 * DAY),
    )
    # The longest settled first.
    assert planned(ledger) == [dropped.series_uid, sent.series_uid]
    assert planned(ledger, purge_failed=True) == [
        dropped.series_uid,
        refused.series_uid,
        sent.series_uid,
    ]
    everything_done = [dropped.series_uid, refused.series_uid, sent.series_uid, fresh.series_uid]
    assert planned(ledger, purge_failed=True, emergency=True) == everything_done
    assert stuck.series_uid not in planned(ledger, purge_failed=True, emergency=True)


def test_a_processed_series_goes_with_its_outputs_once_their_dispatch_is_done() -> None:
    series = Series.received(1)
    output = reference("jobs/p/out/o.dcm", b"output")
    (purge,) = plan_purges(
        ledger_of(*series.processed(NOW - 4 * DAY, [output])), now=NOW, retention=RETENTION
    )
    assert purge.blobs.keys() == {*(b.key for b in series.blobs), output.key}
    assert purge.completion_ids == [series.completion_id]


def test_the_order_events_are_read_in_does_not_change_the_plan() -> None:
    series = Series.received(1)
    events = series.processed(NOW - 4 * DAY, [reference("jobs/p/out/o.dcm", b"o")])
    shuffled = random.Random(7).sample(events, len(events))
    assert planned(ledger_of(*shuffled)) == [series.series_uid]


def test_retention_counts_from_the_last_thing_that_happened_to_the_series() -> None:
    series = Series.received(1)
    (completed, decided, command, failure) = series.dispatched(NOW - 6 * DAY, outcome="failed")
    retried = at(NOW - DAY, JobRetryRequested(job_id=command.payload.job_id))  # type: ignore[attr-defined]
    ledger = ledger_of(completed, decided, command, failure, retried)
    assert planned(ledger, purge_failed=True) == []  # the retry is pending: its inputs are guarded
    (success,) = series.dispatched(NOW - DAY + timedelta(minutes=5))[3:]
    ledger.apply(success)
    assert planned(ledger) == []  # done a day ago
    assert planned(ledger, emergency=True) == [series.series_uid]


def test_a_series_waiting_for_its_study_is_not_done_until_the_study_completes() -> None:
    series = Series.received(1)
    ledger = ledger_of(
        series.completed(NOW - 5 * DAY), series.decided(NOW - 5 * DAY, deferred=True)
    )
    assert planned(ledger) == []
    study = StudyCompleted(
        study_uid=series.study_uid,
        completion_id="study-1",
        series_uids=[series.series_uid],
        reason="timeout",
        rule="study-rule",
        series_completions=[series.completion_id],
    )
    ledger.apply(at(NOW - 4 * DAY, study))
    assert planned(ledger) == [series.series_uid]


def test_an_undecided_series_is_kept_and_a_purged_one_is_not_purged_twice() -> None:
    undecided, purged = Series.received(1), Series.received(2)
    ledger = ledger_of(undecided.completed(NOW - 9 * DAY), *purged.discarded(NOW - 9 * DAY))
    assert planned(ledger) == [purged.series_uid]
    fact = BlobsPurged(
        study_uid=purged.study_uid,
        series_uid=purged.series_uid,
        blob_count=2,
        bytes_freed=10,
        completion_ids=[purged.completion_id],
    )
    ledger.apply(at(NOW - DAY, fact))
    assert planned(ledger) == []
    # A late instance completes the series again: the new blobs go in their own time.
    late = Series(purged.study_uid, purged.series_uid, purged.blobs[:1], completion_id="late")
    ledger.apply(late.completed(NOW - 4 * DAY))
    ledger.apply(late.decided(NOW - 4 * DAY))
    (purge,) = plan_purges(ledger, now=NOW, retention=RETENTION)
    assert purge.completion_ids == ["late"]
