"""Series and study completion as a fold, with a controlled clock."""

from datetime import UTC, datetime, timedelta

from infra.catalogue import (
    BlobReference,
    InstanceReceived,
    RulesEvaluated,
    SeriesCompleted,
    StudyDeferral,
)
from streams.completion import (
    SeriesDue,
    StudyDue,
    StudyRecord,
    admit_instance,
    due,
    record_rules_evaluated,
    record_series_completed,
    record_study_completed,
    series_completed,
    study_completed,
)
from streams.config import RoutingSettings

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
SETTINGS = RoutingSettings(
    series_complete_trigger=60, study_complete_trigger=900, study_forcecomplete_trigger=5400
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def blob(series: str, n: int) -> BlobReference:
    return BlobReference(key=f"1.2/{series}/{n}.dcm", size=1, sha256="0" * 64)


def arrived(series: str, n: int, description: str = "") -> InstanceReceived:
    return InstanceReceived(
        study_uid="1.2",
        series_uid=series,
        sop_uid=f"{series}.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        blob=blob(series, n),
        tags={"SeriesDescription": description},
    )


def receive(
    record: StudyRecord | None,
    series: str,
    n: int,
    *,
    when: float,
    offset: int,
    description: str = "",
) -> StudyRecord:
    admitted = admit_instance(
        record, arrived(series, n, description), partition=3, offset=offset, at=at(when)
    )
    assert admitted is not None
    return admitted


def complete(
    record: StudyRecord, series: str, count: int, *, when: float, through: int
) -> tuple[StudyRecord, SeriesCompleted]:
    completed = series_completed(record, series, [blob(series, n) for n in range(count)])
    after = record_series_completed(
        record, completed, through_offset=through, still_pending=False, at=at(when)
    )
    return after, completed


def test_a_series_is_due_once_no_instance_arrived_for_the_trigger() -> None:
    record = receive(None, "s1", 0, when=0, offset=10)
    record = receive(record, "s1", 1, when=30, offset=11)
    assert due(record, now=at(89.9), settings=SETTINGS) == []
    assert due(record, now=at(90), settings=SETTINGS) == [SeriesDue("s1")]
    completed = series_completed(record, "s1", [blob("s1", 0), blob("s1", 1)])
    assert completed.instance_count == 2
    assert completed.tags == {"SeriesDescription": ""}
    assert not completed.late_arrival


def test_a_replayed_instance_is_ignored_and_a_late_one_starts_a_new_completion() -> None:
    record = receive(None, "s1", 0, when=0, offset=10)
    record, first = complete(record, "s1", 1, when=61, through=10)
    assert record.is_idle()
    assert admit_instance(record, arrived("s1", 0), partition=3, offset=10, at=at(62)) is None
    late = receive(record, "s1", 1, when=100, offset=25)
    owed = due(late, now=at(160), settings=SETTINGS)
    assert owed == [SeriesDue("s1")]
    again = series_completed(late, "s1", [blob("s1", 1)])
    assert again.late_arrival
    assert again.completion_id != first.completion_id


def test_folding_the_same_completion_twice_changes_nothing() -> None:
    record = receive(None, "s1", 0, when=0, offset=10)
    once, completed = complete(record, "s1", 1, when=61, through=10)
    twice = record_series_completed(
        once, completed, through_offset=10, still_pending=False, at=at(62)
    )
    assert twice == once


def deferred(
    record: StudyRecord, completed: SeriesCompleted, terms: StudyDeferral, *, when: float
) -> StudyRecord:
    evaluated = RulesEvaluated(
        study_uid="1.2",
        series_uid=completed.series_uid,
        completion_id=completed.completion_id,
        matched_rules=[terms.rule],
        deferred=[terms],
    )
    return record_rules_evaluated(record, evaluated, at=at(when))


def test_a_study_by_timeout_waits_for_quiet_and_for_its_pending_series() -> None:
    terms = StudyDeferral(rule="study")
    record = receive(None, "s1", 0, when=0, offset=1)
    record, s1 = complete(record, "s1", 1, when=60, through=1)
    record = deferred(record, s1, terms, when=60)
    record = receive(record, "s2", 0, when=950, offset=2)
    assert due(record, now=at(990), settings=SETTINGS) == [], "s2 is still incomplete"
    record, s2 = complete(record, "s2", 1, when=1010, through=2)
    record = deferred(record, s2, terms, when=1010)
    assert due(record, now=at(1909), settings=SETTINGS) == []
    (owed,) = due(record, now=at(1910), settings=SETTINGS)
    assert owed == StudyDue("study", "timeout")
    fact = study_completed(record, owed, {s1.completion_id: s1, s2.completion_id: s2})
    assert fact.series_uids == ["s1", "s2"]
    assert len(fact.blobs) == 2
    assert record_study_completed(record, fact, at=at(1911)).is_idle()


def test_a_study_by_received_series_completes_when_the_expression_is_met() -> None:
    terms = StudyDeferral(
        rule="knee",
        condition="received_series",
        required_series="'Axial T2' and ('Sag T1 GRE' or 'Sag T1 TSE')",
    )
    record = receive(None, "s1", 0, when=0, offset=1, description="AXIAL T2 FS")
    record, s1 = complete(record, "s1", 1, when=60, through=1)
    record = deferred(record, s1, terms, when=60)
    assert due(record, now=at(5000), settings=SETTINGS) == []
    record = receive(record, "s2", 0, when=100, offset=2, description="sag t1 tse")
    record, s2 = complete(record, "s2", 1, when=160, through=2)
    record = deferred(record, s2, terms, when=160)
    assert due(record, now=at(161), settings=SETTINGS) == [StudyDue("knee", "received_series")]


def test_a_study_is_forced_after_the_force_trigger_with_its_rules_action() -> None:
    record = receive(None, "s1", 0, when=0, offset=1, description="Scout")
    record, s1 = complete(record, "s1", 1, when=60, through=1)
    for action, expected in (
        ("discard", [StudyDue("r", "forced", "discard")]),
        ("proceed", [StudyDue("r", "forced", "proceed")]),
        ("ignore", []),
    ):
        terms = StudyDeferral(
            rule="r",
            condition="received_series",
            required_series="'Never'",
            force_action=action,  # type: ignore[arg-type]
        )
        waiting = deferred(record, s1, terms, when=60)
        assert due(waiting, now=at(5459), settings=SETTINGS) == []
        assert due(waiting, now=at(5460), settings=SETTINGS) == expected


def test_an_operator_forces_a_study_that_existed_before_the_request() -> None:
    record = receive(None, "s1", 0, when=0, offset=1)
    record, s1 = complete(record, "s1", 1, when=60, through=1)
    record = deferred(record, s1, StudyDeferral(rule="r"), when=60)
    assert due(record, now=at(70), settings=SETTINGS, forced_at=at(30)) == [], "request predates it"
    assert due(record, now=at(70), settings=SETTINGS, forced_at=at(65)) == [
        StudyDue("r", "operator")
    ]
