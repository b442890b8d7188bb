"""Rows of the `events` and `audit` tables: every event as it happened, and who changed what.

Pure functions of an envelope and its log position. `entity` is the sorting key that makes
timelines cheap: a job's id for its commands and outcomes, the study for study facts, the
envelope's subject for everything else.
"""

import json
from datetime import datetime
from typing import Any, NamedTuple

from infra.catalogue import ConfigChanged, OperatorAction
from infra.events import Envelope

EVENT_COLUMNS = (
    "entity",
    "occurred_at",
    "event_id",
    "type",
    "version",
    "source",
    "subject",
    "study_uid",
    "series_uids",
    "job_id",
    "target",
    "causation_id",
    "correlation_id",
    "actor",
    "payload",
    "topic",
    "partition",
    "offset",
)
AUDIT_COLUMNS = (
    "occurred_at",
    "event_id",
    "category",
    "type",
    "actor",
    "name",
    "before",
    "after",
    "details",
)


class References(NamedTuple):
    """What an event names, read defensively from whichever payload fields it has."""

    study_uid: str
    series_uids: list[str]
    job_id: str
    target: str


def references(envelope: Envelope) -> References:
    fields = vars(envelope.payload)  # fields this payload type may not have, read with defaults
    series = fields.get("series_uids")
    one_series = fields.get("series_uid")
    series_uids = list(series) if isinstance(series, list) else []
    if isinstance(one_series, str) and one_series and one_series not in series_uids:
        series_uids.insert(0, one_series)
    return References(
        study_uid=_text(fields.get("study_uid")),
        series_uids=series_uids,
        job_id=_text(fields.get("job_id")),
        target=_text(fields.get("target")),
    )


def entity(envelope: Envelope, refs: References) -> str:
    return refs.job_id or refs.study_uid or envelope.subject


def event_row(
    envelope: Envelope, refs: References, *, topic: str, partition: int, offset: int
) -> tuple[Any, ...]:
    """One `events` row, in `EVENT_COLUMNS` order; `refs` are `references(envelope)`."""
    return (
        entity(envelope, refs),
        envelope.occurred_at,
        envelope.event_id,
        envelope.type,
        envelope.version,
        envelope.source,
        envelope.subject,
        refs.study_uid,
        refs.series_uids,
        refs.job_id,
        refs.target,
        envelope.causation_id or "",
        envelope.correlation_id or "",
        envelope.actor or "",
        envelope.payload.model_dump_json(),
        topic,
        partition,
        offset,
    )


def audit_row(envelope: Envelope) -> tuple[Any, ...] | None:
    """One `audit` row for a configuration change or operator action, else None."""
    payload = envelope.payload
    if isinstance(payload, ConfigChanged):
        return _audit(
            envelope,
            category="config",
            name=payload.name,
            before=_json_or_empty(payload.before),
            after=_json_or_empty(payload.after),
            details="",
        )
    if isinstance(payload, OperatorAction):
        return _audit(
            envelope,
            category="operation",
            name=envelope.subject,
            before="",
            after="",
            details=payload.model_dump_json(),
        )
    return None


def _audit(
    envelope: Envelope, *, category: str, name: str, before: str, after: str, details: str
) -> tuple[Any, ...]:
    occurred_at: datetime = envelope.occurred_at
    return (
        occurred_at,
        envelope.event_id,
        category,
        envelope.type,
        envelope.actor or "",
        name,
        before,
        after,
        details,
    )


def _json_or_empty(value: dict[str, Any] | None) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
