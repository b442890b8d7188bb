"""A recorded story as events, and helpers to publish it and read the tables back."""

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from infra.catalogue import (
    BlobReference,
    DispatchFailed,
    DispatchSeries,
    DispatchStarted,
    DispatchSucceeded,
    InstanceReceived,
    JobRetryRequested,
    RuleSaved,
    RulesEvaluated,
    SeriesCompleted,
    SeriesDiscarded,
    StudyDeferral,
)
from infra.events import Envelope, Payload
from projections.schema import PROJECTION_TABLES
from projections.store import ClickHouse

T0 = datetime(2025, 3, 4, 8, 0, tzinfo=UTC)
STUDY = "1.2.826.0.1.1"
CT_SERIES = "1.2.826.0.1.1.1"
SR_SERIES = "1.2.826.0.1.1.2"
MR_STUDY = "1.2.826.0.1.2"
MR_SERIES = "1.2.826.0.1.2.1"
JOB = "job-ct-pacs"

CT_TAGS = {
    "PatientName": "DOE^JANE",
    "PatientID": "P001",
    "AccessionNumber": "ACC1",
    "Modality": "CT",
    "StudyDescription": "CT Head",
    "SeriesDescription": "Axial 1mm",
    "SeriesDate": "20250304",
}
SR_TAGS = {**CT_TAGS, "Modality": "SR", "SeriesDescription": "Dose report"}
MR_TAGS = {
    "PatientName": "Smith^Karl",
    "PatientID": "q77",
    "AccessionNumber": "ACC2",
    "Modality": "MR",
    "StudyDescription": "MR Knee",
    "SeriesDescription": "T1 sag",
}

ORDER_KEYS = {
    "events": "entity, occurred_at, event_id",
    "audit": "occurred_at, event_id",
    "series": "series_uid",
    "jobs": "job_id, target",
    "pending_studies": "study_uid, rule",
}


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def blob(name: str) -> BlobReference:
    return BlobReference(key=name, size=100, sha256=hashlib.sha256(name.encode()).hexdigest())


def event(payload: Payload, minutes: float, *, actor: str | None = None) -> Envelope:
    return Envelope(
        payload=payload, source="story", subject="story", occurred_at=at(minutes), actor=actor
    )


def instance(
    study: str, series: str, number: int, tags: dict[str, str], minutes: float
) -> Envelope:
    return event(
        InstanceReceived(
            study_uid=study,
            series_uid=series,
            sop_uid=f"{series}.{number}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            blob=blob(f"{series}.{number}"),
            calling_aet="SCANNER1",
            called_aet="TALARIA",
            tags=tags,
        ),
        minutes,
    )


def story() -> list[Envelope]:
    """Three CT instances complete, a rule routes them to PACS, the first dispatch fails and is
    retried, the second succeeds; an SR series matches nothing and is discarded; an MR series
    waits for its study; an administrator saves the rule."""
    return [
        event(
            RuleSaved(name="ct-to-pacs", before=None, after={"rule": "@Modality@ == 'CT'"}),
            0,
            actor="alice",
        ),
        *(instance(STUDY, CT_SERIES, n, CT_TAGS, 1 + n / 10) for n in range(3)),
        *(instance(STUDY, SR_SERIES, n, SR_TAGS, 1.5 + n / 10) for n in range(2)),
        event(
            SeriesCompleted(
                study_uid=STUDY,
                series_uid=CT_SERIES,
                completion_id="c-ct",
                instance_count=3,
                blobs=[blob(f"{CT_SERIES}.{n}") for n in range(3)],
                tags=CT_TAGS,
            ),
            3,
        ),
        event(
            RulesEvaluated(
                study_uid=STUDY,
                series_uid=CT_SERIES,
                completion_id="c-ct",
                matched_rules=["ct-to-pacs"],
            ),
            3.01,
        ),
        event(
            DispatchSeries(
                study_uid=STUDY,
                job_id=JOB,
                rule="ct-to-pacs",
                target="pacs",
                series_uids=[CT_SERIES],
                inputs=[blob(f"{CT_SERIES}.{n}") for n in range(3)],
            ),
            3.02,
        ),
        event(DispatchStarted(job_id=JOB, target="pacs", attempt=1, instance_count=3), 3.5),
        event(
            DispatchFailed(
                job_id=JOB,
                target="pacs",
                attempt=1,
                reason="association rejected",
                will_retry=True,
                next_attempt_at=at(5),
            ),
            3.6,
        ),
        event(
            SeriesCompleted(
                study_uid=STUDY,
                series_uid=SR_SERIES,
                completion_id="c-sr",
                instance_count=2,
                blobs=[blob(f"{SR_SERIES}.{n}") for n in range(2)],
                tags=SR_TAGS,
            ),
            3.7,
        ),
        event(
            RulesEvaluated(
                study_uid=STUDY, series_uid=SR_SERIES, completion_id="c-sr", matched_rules=[]
            ),
            3.71,
        ),
        event(
            SeriesDiscarded(study_uid=STUDY, series_uid=SR_SERIES, reason="no rule matched"),
            3.72,
        ),
        event(DispatchStarted(job_id=JOB, target="pacs", attempt=2, instance_count=3), 5),
        event(DispatchSucceeded(job_id=JOB, target="pacs", attempt=2, confirmed=3), 5.5),
        instance(MR_STUDY, MR_SERIES, 0, MR_TAGS, 6),
        event(
            SeriesCompleted(
                study_uid=MR_STUDY,
                series_uid=MR_SERIES,
                completion_id="c-mr",
                instance_count=1,
                blobs=[blob(f"{MR_SERIES}.0")],
                tags=MR_TAGS,
            ),
            7,
        ),
        event(
            RulesEvaluated(
                study_uid=MR_STUDY,
                series_uid=MR_SERIES,
                completion_id="c-mr",
                matched_rules=["mr-study"],
                deferred=[
                    StudyDeferral(
                        rule="mr-study", condition="received_series", required_series="T2"
                    )
                ],
            ),
            7.01,
        ),
        event(JobRetryRequested(job_id="job-unknown"), 8, actor="bob"),
    ]


BOOKKEEPING = {"series": "positions, version", "jobs": "positions, version"}
BOOKKEEPING["pending_studies"] = BOOKKEEPING["series"]


def tables(store: ClickHouse) -> dict[str, list[tuple[Any, ...]]]:
    """Every projection table's rows as a query sees them (FINAL), in key order, without the
    fold's bookkeeping columns (which depend on how partitions interleaved)."""
    return {
        table: [
            tuple(row)
            for row in store.select(
                f"SELECT * {except_bookkeeping(table)} FROM {{db}}.{table} FINAL "
                f"ORDER BY {ORDER_KEYS[table]}"
            ).rows
        ]
        for table in PROJECTION_TABLES
    }


def except_bookkeeping(table: str) -> str:
    return f"EXCEPT ({BOOKKEEPING[table]})" if table in BOOKKEEPING else ""


def row(store: ClickHouse, table: str, where: str, **params: Any) -> dict[str, Any]:
    found = store.select(f"SELECT * FROM {{db}}.{table} FINAL WHERE {where}", params).dicts()
    assert len(found) == 1, f"{len(found)} rows in {table} where {where}"
    return found[0]
