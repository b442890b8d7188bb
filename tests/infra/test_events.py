"""The envelope on the wire: JSON body, type/version headers, upcasting, refusal of bad records."""

import json
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest

from infra.catalogue import (
    CATALOGUE,
    BlobReference,
    DispatchSeries,
    InstanceReceived,
    RuleSaved,
    SeriesCompleted,
)
from infra.events import (
    Catalogue,
    Envelope,
    Payload,
    UndecodableEvent,
    decode,
    encode,
    header_value,
    new_event_id,
)
from infra.topics import Lane, Topic

BLOB = BlobReference(key="studies/1.2/1.2.3/1.2.3.4.dcm", size=10, sha256="a" * 64)


def received(**tags: str) -> InstanceReceived:
    return InstanceReceived(
        study_uid="1.2",
        series_uid="1.2.3",
        sop_uid="1.2.3.4",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        blob=BLOB,
        calling_aet="CT1",
        called_aet="TALARIA",
        peer_address="127.0.0.1",
        peer_port=40000,
        tags=dict(tags),
    )


def test_an_event_survives_the_wire_with_type_and_version_in_headers() -> None:
    envelope = Envelope(
        payload=received(PatientName="Ünïcode^Name"), source="ingest", subject="1.2.3"
    )
    key, value, headers = encode(envelope)
    assert key == b"1.2"  # instance events are keyed by study
    assert header_value(headers, "type") == "InstanceReceived"
    assert header_value(headers, "version") == "1"
    assert json.loads(value)["payload"]["tags"]["PatientName"] == "Ünïcode^Name"
    assert decode(value, headers, CATALOGUE) == envelope


def test_caused_events_carry_the_correlation_of_their_cause() -> None:
    cause = Envelope(payload=received(), source="ingest", subject="1.2.3", actor="alice")
    effect = cause.caused(
        SeriesCompleted(
            study_uid="1.2",
            series_uid="1.2.3",
            completion_id="c1",
            instance_count=1,
            blobs=[BLOB],
            tags={},
        ),
        source="streams",
        subject="1.2.3",
    )
    assert effect.causation_id == cause.event_id
    assert effect.correlation_id == cause.event_id
    assert effect.actor == "alice"
    assert effect.event_id != cause.event_id


def test_event_ids_are_unique_and_ordered_by_millisecond() -> None:
    ids = [new_event_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert [i[:13] for i in ids] == sorted(i[:13] for i in ids)


def test_commands_travel_on_the_topic_of_their_lane_keyed_by_study() -> None:
    command = DispatchSeries(
        study_uid="1.2",
        lane=Lane.URGENT,
        job_id="j1",
        rule="ct",
        target="pacs",
        series_uids=["1.2.3"],
        inputs=[BLOB],
    )
    assert command.topic() is Topic.DISPATCH_URGENT
    assert command.partition_key() == "1.2"


def test_config_events_are_keyed_by_what_they_configure() -> None:
    assert RuleSaved(name="ct", after={"x": 1}).partition_key() == "rule:ct"


def test_every_catalogue_type_names_a_topic_and_is_registered_once() -> None:
    names = [payload_class.TYPE for payload_class in CATALOGUE.types()]
    assert len(names) == len(set(names))
    for expected in ("InstanceReceived", "DispatchFailed", "RuleSaved", "JobRetryRequested"):
        assert expected in names


class Measured(Payload):
    """A test event whose shape changed twice."""

    TYPE: ClassVar[str] = "Measured"
    VERSION: ClassVar[int] = 3
    millimetres: float
    unit_note: str

    def topic(self) -> Topic:
        return Topic.OPERATIONS

    def partition_key(self) -> str:
        return "m"


def old_catalogue() -> Catalogue:
    catalogue = Catalogue()
    catalogue.register(Measured)

    @catalogue.upcaster("Measured", 1)
    def centimetres_to_millimetres(data: dict[str, Any]) -> dict[str, Any]:
        return {"millimetres": data["centimetres"] * 10}

    @catalogue.upcaster("Measured", 2)
    def add_note(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "unit_note": "upcast"}

    return catalogue


def record(
    type_name: str, version: int, payload: object
) -> tuple[bytes, list[tuple[str, str | bytes | None]]]:
    body = {
        "event_id": new_event_id(),
        "type": type_name,
        "version": version,
        "occurred_at": datetime.now(UTC).isoformat(),
        "source": "old-build",
        "subject": "m",
        "payload": payload,
    }
    headers: list[tuple[str, str | bytes | None]] = [
        ("type", type_name.encode()),
        ("version", str(version).encode()),
    ]
    return json.dumps(body).encode(), headers


def test_old_versions_are_upcast_on_read() -> None:
    value, headers = record("Measured", 1, {"centimetres": 2.5})
    envelope = decode(value, headers, old_catalogue())
    assert envelope.payload == Measured(millimetres=25.0, unit_note="upcast")
    assert envelope.version == 3


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (b"\xff\xfe garbage", [], "not JSON"),
        (b"[1, 2]", [], "not a JSON object"),
        (b"", [], "empty"),
        (*record("Measured", 4, {"millimetres": 1}), "newer than this build"),
        (*record("NoSuchThing", 1, {}), "unknown event type"),
        (*record("Measured", 3, {"millimetres": "wide", "unit_note": ""}), "Measured v3"),
        (*record("Measured", 3, {"millimetres": 1, "unit_note": "", "extra": 1}), "Measured v3"),
    ],
)
def test_records_that_cannot_become_a_current_event_are_refused(
    value: bytes, headers: list[tuple[str, str | bytes | None]], reason: str
) -> None:
    with pytest.raises(UndecodableEvent, match=reason):
        decode(value, headers, old_catalogue())


def test_a_timestamp_without_zone_is_refused() -> None:
    value, headers = record("Measured", 3, {"millimetres": 1, "unit_note": ""})
    body = json.loads(value)
    body["occurred_at"] = "2026-01-01T00:00:00"
    with pytest.raises(UndecodableEvent, match="time zone"):
        decode(json.dumps(body).encode(), headers, old_catalogue())


def test_current_events_decode_the_same_with_or_without_their_version_header() -> None:
    moment = datetime.fromisoformat("2026-03-01T10:00:00.25+02:00")
    envelope = Envelope(
        payload=received(Modality="CT"), source="ingest", subject="1.2.3", occurred_at=moment
    )
    _key, value, headers = encode(envelope)
    short = decode(value, headers, CATALOGUE)  # type and version in the headers
    long = decode(value, [h for h in headers if h[0] != "version"], CATALOGUE)
    assert short == long == envelope
    assert short.occurred_at.tzinfo == long.occurred_at.tzinfo == moment.tzinfo
    assert short.occurred_at.isoformat() == "2026-03-01T10:00:00.250000+02:00"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("source", "", "'source' missing"),
        ("occurred_at", 1767225600, "'occurred_at' missing"),
        ("actor", 7, "'actor' is not text"),
    ],
)
def test_current_events_with_bad_envelope_fields_are_refused(
    field: str, value: object, reason: str
) -> None:
    _key, raw, headers = encode(Envelope(payload=received(), source="ingest", subject="1.2.3"))
    body = json.loads(raw)
    body[field] = value
    with pytest.raises(UndecodableEvent, match=reason):
        decode(json.dumps(body).encode(), headers, CATALOGUE)
