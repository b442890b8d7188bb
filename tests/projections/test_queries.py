"""The queries of the UI and API, on real chDB tables filled by the fold from a recorded story."""

from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from infra.catalogue import DispatchFailed, DispatchSeries, DispatchStarted, DispatchSucceeded
from projections import queries
from projections.errors import QueryFailed, QueryRefused
from projections.queries import ArchiveQuery, Page
from projections.store import ClickHouse
from projections.stuck import StuckWatch
from projections.writer import BatchWriter, Record
from tests.projections.story import (
    CT_SERIES,
    JOB,
    MR_SERIES,
    MR_STUDY,
    SR_SERIES,
    STUDY,
    at,
    blob,
    event,
    instance,
    story,
)


def more_series() -> list:  # type: ignore[type-arg]
    """Twelve more series of patient "Lee^Ann Marie", one per hour, MR and CT alternating."""
    return [
        instance(
            "7.1",
            f"7.1.{n:02d}",
            0,
            {
                "PatientName": "Lee^Ann Marie",
                "PatientID": "LEE-9",
                "Modality": "MR" if n % 2 else "CT",
                "StudyDescription": "Follow-up",
            },
            60 * (n + 1),
        )
        for n in range(12)
    ]


def stuck_dispatch() -> list:  # type: ignore[type-arg]
    """A dispatch of one of Lee's series to "archive" that is retrying, and one that failed."""
    events = []
    for job, series, final in (("job-retry", "7.1.00", True), ("job-dead", "7.1.01", False)):
        events += [
            event(
                DispatchSeries(
                    study_uid="7.1",
                    job_id=job,
                    rule="to-archive",
                    target="archive",
                    series_uids=[series],
                    inputs=[blob(series)],
                ),
                800,
            ),
            event(DispatchStarted(job_id=job, target="archive", attempt=1, instance_count=1), 801),
            event(
                DispatchFailed(
                    job_id=job, target="archive", attempt=1, reason="timeout", will_retry=final
                ),
                802,
            ),
        ]
    return events


@pytest.fixture
def filled(store: ClickHouse) -> ClickHouse:
    events = story() + more_series() + stuck_dispatch()
    BatchWriter(store).apply(
        [Record(envelope=e, topic="log", partition=0, offset=n) for n, e in enumerate(events)]
    )
    return store


def uids(page: queries.Paged) -> list[str]:
    return [row["series_uid"] for row in page.rows]


def test_archive_search_matches_patient_names_by_prefix_of_any_component_ignoring_case(
    filled: ClickHouse,
) -> None:
    assert set(uids(queries.search_archive(filled, ArchiveQuery(patient_name="doe")))) == {
        CT_SERIES,
        SR_SERIES,
    }
    assert uids(queries.search_archive(filled, ArchiveQuery(patient_name="JAN"))) == [
        SR_SERIES,
        CT_SERIES,
    ]
    assert len(queries.search_archive(filled, ArchiveQuery(patient_name="mari")).rows) == 12
    assert queries.search_archive(filled, ArchiveQuery(patient_name="ane")).rows == []
    assert uids(queries.search_archive(filled, ArchiveQuery(patient_id="q7"))) == [MR_SERIES]


def test_archive_search_filters_combine(filled: ClickHouse) -> None:
    def search(**filters: object) -> list[str]:
        return sorted(uids(queries.search_archive(filled, ArchiveQuery(**filters))))  # type: ignore[arg-type]

    assert search(accession_number="ACC1") == [CT_SERIES, SR_SERIES]
    assert search(accession_number="ACC1", modality="SR") == [SR_SERIES]
    assert search(study_uid=MR_STUDY) == [MR_SERIES]
    assert search(series_uid=CT_SERIES) == [CT_SERIES]
    assert search(description="dose") == [SR_SERIES]
    assert search(description="KNEE") == [MR_SERIES]
    assert search(sender_aet="SCANNER1", rule="ct-to-pacs") == [CT_SERIES]
    assert search(status="discarded") == [SR_SERIES]
    assert search(status="error") == ["7.1.01"]
    assert search(status="routing") == ["7.1.00"]
    assert search(received_from=at(120), received_until=at(240)) == ["7.1.01", "7.1.02"]
    assert search(patient_name="lee", modality="MR", received_until=at(6 * 60)) == [
        "7.1.01",
        "7.1.03",  # 7.1.05 arrived exactly at the end of the range, which is exclusive
    ]


def test_archive_search_pages_through_a_stable_sort(filled: ClickHouse) -> None:
    newest_first = ArchiveQuery(patient_name="lee")
    first = queries.search_archive(filled, newest_first, Page(limit=5))
    second = queries.search_archive(filled, newest_first, Page(limit=5, offset=5))
    last = queries.search_archive(filled, newest_first, Page(limit=5, offset=10))
    assert uids(first) == [f"7.1.{n:02d}" for n in (11, 10, 9, 8, 7)]
    assert uids(second) == [f"7.1.{n:02d}" for n in (6, 5, 4, 3, 2)]
    assert (uids(last), first.has_more, last.has_more) == (["7.1.01", "7.1.00"], True, False)
    by_modality = queries.search_archive(
        filled, ArchiveQuery(patient_name="lee", sort="modality", descending=False), Page(limit=7)
    )
    assert [row["modality"] for row in by_modality.rows] == ["CT"] * 6 + ["MR"]
    with pytest.raises(QueryFailed):
        Page(limit=10_000)


def test_a_job_without_progress_for_the_stuck_period_is_reported_once(
    filled: ClickHouse,
) -> None:
    # job-retry failed at minute 802 "will retry", then nothing more happened.
    now = at(820)
    watch = StuckWatch(filled, idle=timedelta(minutes=30), clock=lambda: now)
    with capture_logs() as early:
        assert watch.check() == []
    assert early == []
    now = at(840)
    with capture_logs() as warned:
        (stuck,) = watch.check()
        watch.check()
    assert (stuck["job_id"], stuck["state"]) == ("job-retry", "retrying")
    (warning,) = warned
    assert warning["event"] == "job stuck"
    assert (warning["job_id"], warning["study_uid"], warning["series_uids"]) == (
        "job-retry",
        "7.1",
        ["7.1.00"],
    )
    assert REGISTRY.get_sample_value("talaria_stuck_jobs") == 1


def test_pages_show_rows_as_last_folded_while_older_versions_are_still_stored(
    store: ClickHouse,
) -> None:
    store.command("SYSTEM STOP MERGES {db}.series")
    store.command("SYSTEM STOP MERGES {db}.jobs")
    writer = BatchWriter(store)
    events = story() + more_series() + stuck_dispatch()
    writer.apply(
        [Record(envelope=e, topic="log", partition=0, offset=n) for n, e in enumerate(events)]
    )
    assert uids(queries.search_archive(store, ArchiveQuery(status="routing"))) == ["7.1.00"]
    succeeded = DispatchSucceeded(job_id="job-retry", target="archive", attempt=2, confirmed=1)
    writer.apply(
        [Record(envelope=event(succeeded, 900), topic="log", partition=0, offset=len(events))]
    )
    versions = store.select("SELECT count() FROM {db}.series WHERE series_uid = '7.1.00'").rows
    assert versions == [(2,)]  # the routing version is still stored, and must not show
    assert queries.search_archive(store, ArchiveQuery(status="routing")).rows == []
    assert "7.1.00" in uids(queries.search_archive(store, ArchiveQuery(status="done")))
    assert queries.routing_queue(store).rows == []


def test_queue_views_show_active_failed_and_pending_work(filled: ClickHouse) -> None:
    routing = queries.routing_queue(filled).rows
    assert [(r["job_id"], r["state"], r["attempts"], r["error"]) for r in routing] == [
        ("job-retry", "retrying", 1, "timeout")
    ]
    assert queries.processing_queue(filled).rows == []
    failed = queries.failures(filled).rows
    assert [(r["job_id"], r["target"], r["series_uids"]) for r in failed] == [
        ("job-dead", "archive", ["7.1.01"])
    ]
    pending = queries.pending_studies(filled).rows
    assert [(r["study_uid"], r["rule"], r["series_uids"]) for r in pending] == [
        (MR_STUDY, "mr-study", [MR_SERIES])
    ]


def test_timelines_follow_a_series_into_its_jobs_in_order(filled: ClickHouse) -> None:
    series = [e["type"] for e in queries.series_timeline(filled, CT_SERIES)]
    assert series == [
        *["InstanceReceived"] * 3,
        "SeriesCompleted",
        "RulesEvaluated",
        "DispatchSeries",
        "DispatchStarted",
        "DispatchFailed",
        "DispatchStarted",
        "DispatchSucceeded",
    ]
    study = queries.study_timeline(filled, STUDY)
    ct_facts, sr_facts, job_events = 5, 5, 5  # the SR's: 2 instances, completion, rules, discard
    assert len(study) == ct_facts + sr_facts + job_events
    assert [e["occurred_at"] for e in study] == sorted(e["occurred_at"] for e in study)
    job = [(e["type"], e["target"]) for e in queries.job_timeline(filled, JOB)]
    assert job[0] == ("DispatchSeries", "pacs")
    assert len(job) == 5
    assert queries.series_timeline(filled, "9.9.9") == []


def test_dashboard_figures(filled: ClickHouse) -> None:
    window = {"since": at(0), "until": at(24 * 60)}
    hours = queries.series_per_hour(filled, **window)
    assert {(r["hour"].hour, r["modality"]): r["series"] for r in hours if r["hour"].hour == 8} == {
        (8, "CT"): 1,
        (8, "SR"): 1,
        (8, "MR"): 1,
    }
    assert sum(r["series"] for r in hours) == 15
    [pacs] = [r for r in queries.turnaround(filled, **window) if r["target"] == "pacs"]
    assert pacs["dispatches"] == 1
    assert pacs["seconds_p50_p95_p99"] == [(at(5.5) - at(1)) / timedelta(seconds=1)] * 3
    rates = {
        r["target"]: (r["finished"], r["failed"], r["error_rate"])
        for r in queries.error_rates(filled, **window)
    }
    assert rates == {"archive": (1, 1, 1.0), "pacs": (1, 0, 0.0)}


def test_audit_trail_shows_who_changed_what(filled: ClickHouse) -> None:
    trail = queries.audit_trail(filled).rows
    assert [(r["type"], r["actor"]) for r in trail] == [
        ("JobRetryRequested", "bob"),
        ("RuleSaved", "alice"),
    ]
    assert trail[1]["before"] == ""
    assert trail[1]["after"] == '{"rule": "@Modality@ == \'CT\'"}'


def test_the_analytics_entry_point_reads_but_refuses_every_kind_of_write(
    filled: ClickHouse,
) -> None:
    result = filled.analytics(
        "SELECT modality, count() AS n FROM series GROUP BY modality ORDER BY modality"
    )
    assert result.columns == ("modality", "n")
    assert result.rows == [("CT", 7), ("MR", 7), ("SR", 1)]
    for statement in (
        "INSERT INTO series (series_uid) VALUES ('x')",
        "DROP TABLE series",
        "ALTER TABLE series DELETE WHERE 1",
        "CREATE TABLE evil (a Int8) ENGINE = Memory",
        "SELECT 1 SETTINGS readonly = 0",
        "SET readonly = 0",
        "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    ):
        with pytest.raises(QueryRefused):
            filled.analytics(statement)
    with pytest.raises(QueryFailed):
        filled.analytics("SELECT no_such_column FROM series")
    # The refusals left the writing session as it was.
    assert filled.select("SELECT count() FROM {db}.series FINAL").rows == [(15,)]
    filled.insert("audit", [], columns=("event_id",))
