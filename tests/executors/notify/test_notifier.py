"""The notifier on the real log: Notify commands in, webhooks and emails out, truthful events."""

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executors.notify.notifier import NotifySettings
from executors.notify.service import notify_service
from infra.catalogue import (
    JobRetryRequested,
    NotificationFailed,
    NotificationSent,
    Notify,
    RuleSaved,
)
from infra.events import Envelope
from infra.kafka.broker import LocalBroker
from infra.topics import Lane, Topic
from tests.conftest import settings_for
from tests.executors.notify.conftest import MailServer, WebhookServer
from tests.support import LogReader, publish, reading

pytestmark = pytest.mark.integration

PAYLOAD = '"text": "{{ body }}", "patient": "{{ patient_name }}", "task": "{{ task_id }}"'
BODY = "{{ event }} for rule {{ rule }}{% if details %}: {{ details }}{% endif %}"
TAGS = {"PatientName": "Doe^Jane", "PatientID": "4711", "SeriesDescription": "T1"}


def notify_settings(broker: LocalBroker, tmp_path: Path, **overrides: Any) -> NotifySettings:
    log_settings = settings_for(broker)
    return NotifySettings(
        **log_settings.model_dump(exclude={"data_dir"}),
        data_dir=tmp_path / "data",
        blob_dir=tmp_path / "blobs",
        blob_min_free_bytes=0,
        notify_retry_first_delay_s=1,
        notify_retry_max_delay_s=1,
        notify_retry_max_attempts=3,
        **overrides,
    )


@pytest.fixture
def settings(kafka_broker: LocalBroker, tmp_path: Path, mail_server: MailServer) -> NotifySettings:
    return notify_settings(
        kafka_broker, tmp_path, smtp_host="127.0.0.1", smtp_port=mail_server.port
    )


def rule_saved(name: str, **fields: Any) -> Envelope:
    after = {"rule": "True", "action": "notification", **fields}
    return Envelope(payload=RuleSaved(name=name, after=after), source="test", subject=name)


def notify(rule: str, trigger: str, **details: Any) -> Envelope:
    job = uuid.uuid4().hex
    return Envelope(
        payload=Notify(
            study_uid="1.2.3",
            lane=Lane.URGENT,
            job_id=job,
            rule=rule,
            trigger=trigger,
            details=details,
            series_uids=["1.2.3.4"],
            tags=TAGS,
        ),
        source="test",
        subject=job,
    )


@pytest.fixture
def jobs(settings: NotifySettings) -> Iterator[LogReader]:
    with reading(settings, [Topic.JOBS]) as reader:
        yield reader


def test_a_completion_reaches_the_webhook_and_every_address_without_patient_data(
    settings: NotifySettings, webhook: WebhookServer, mail_server: MailServer, jobs: LogReader
) -> None:
    publish(
        settings,
        [
            rule_saved(
                "stroke",
                notification_webhook=webhook.url,
                notification_payload=PAYLOAD,
                notification_payload_body=BODY,
                notification_email="neuro@h.org, oncall@h.org",
                notification_email_body="{{ details }} ({{ patient_name }})",
            )
        ],
    )
    command = notify("stroke", "completion", text="lesion: 12 ml", requested=True)
    with notify_service(settings):
        publish(settings, [command])
        jobs.wait(lambda r: len(r.of(NotificationSent)) == 3, timeout_s=60, what="three sends")
    job_id = command.payload.job_id  # type: ignore[attr-defined]
    assert webhook.received == [
        (
            200,
            {
                "text": "COMPLETED for rule stroke: lesion: 12 ml",
                "patient": "UNKNOWN",
                "task": job_id,
            },
        )
    ]
    assert sorted(m["To"] for m in mail_server.received) == ["neuro@h.org", "oncall@h.org"]
    mail = mail_server.received[0]
    assert mail["Subject"] == "[Talaria] Rule stroke: COMPLETED"
    assert mail.get_content().strip() == "lesion: 12 ml (UNKNOWN)"
    assert {(e.channel, e.trigger, e.job_id) for e in jobs.of(NotificationSent)} == {
        ("webhook", "completion", job_id),
        ("email:neuro@h.org", "completion", job_id),
        ("email:oncall@h.org", "completion", job_id),
    }
    assert jobs.of(NotificationFailed) == []


def test_a_webhook_answering_500_is_retried_and_the_log_shows_both_attempts(
    kafka_broker: LocalBroker, tmp_path: Path, webhook: WebhookServer
) -> None:
    settings = notify_settings(kafka_broker, tmp_path, phi_notifications=True)
    webhook.answers = [500]
    publish(
        settings,
        [rule_saved("ct", notification_webhook=webhook.url, notification_payload=PAYLOAD)],
    )
    with reading(settings, [Topic.JOBS]) as jobs, notify_service(settings):
        publish(settings, [notify("ct", "reception")])
        jobs.wait(
            lambda r: bool(r.of(NotificationSent)), timeout_s=60, what="the send after a retry"
        )
    (failed,) = jobs.of(NotificationFailed)
    (sent,) = jobs.of(NotificationSent)
    assert (failed.channel, failed.will_retry, failed.attempt) == ("webhook", True, 1)
    assert "500" in failed.reason
    assert failed.next_attempt_at is not None
    assert (sent.channel, sent.attempt) == ("webhook", 2)
    # PHI notifications are enabled here: the patient's name is in the payload.
    assert [(status, body["patient"]) for status, body in webhook.received] == [
        (500, "Doe^Jane"),
        (200, "Doe^Jane"),
    ]
    failed_at, sent_at = (
        moment
        for envelope, moment in jobs.seen
        if isinstance(envelope.payload, NotificationFailed | NotificationSent)
    )
    assert sent_at - failed_at >= 0.9  # the backoff was waited for


def test_a_refused_webhook_waits_in_the_failure_queue_until_an_operator_retries_it(
    settings: NotifySettings, webhook: WebhookServer, mail_server: MailServer, jobs: LogReader
) -> None:
    webhook.answers = [404]
    publish(
        settings,
        [
            rule_saved(
                "mr",
                notification_webhook=webhook.url,
                notification_email="radiology@h.org",
            )
        ],
    )
    command = notify("mr", "error", reason="module crashed")
    job_id = command.payload.job_id  # type: ignore[attr-defined]
    with notify_service(settings):
        publish(settings, [command])
        jobs.wait(lambda r: bool(r.of(NotificationFailed)), timeout_s=60, what="the refusal")
        (failed,) = jobs.of(NotificationFailed)
        assert (failed.channel, failed.will_retry) == ("webhook", False)
        time.sleep(2)  # nothing is retried on its own
        assert len(webhook.received) == 1
        retry = JobRetryRequested(job_id=job_id)
        publish(settings, [Envelope(payload=retry, source="ui", subject=job_id, actor="bob")])
        jobs.wait(lambda r: len(r.of(NotificationSent)) == 2, timeout_s=60, what="the resend")
    # The email went out once, on the first attempt; the retry sent only the webhook.
    assert [m["To"] for m in mail_server.received] == ["radiology@h.org"]
    assert [status for status, _ in webhook.received] == [404, 200]
    assert webhook.received[1][1] == {
        "text": "Rule mr triggered ERROR\n\nDetails:\nmodule crashed\n"
    }
