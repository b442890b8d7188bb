"""The notifier: takes `Notify` commands and reports, channel by channel, what was sent.

Per command: record it (for an operator's retry); if it is a scheduled retry, wait for its
time; compose one message per channel of the rule (its webhook, one email per address); send
each channel not yet marked sent; mark what was sent in the blob store; then publish
`NotificationSent` per sent channel and `NotificationFailed` per failed one, failures last so
that a job's latest outcome shows a failure. When a channel failed for now and attempts remain,
its failure says `will_retry` with the next attempt time and the command goes back on its lane
(attempt + 1, `not_before`, only the failed channels). Otherwise the job is in the failure
queue, from which `JobRetryRequested` sends its unsent channels again.

Unlike mercure, nothing is fire-and-forget: a send counts only when the server accepted it.
"""

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog
from pydantic import Field, SecretStr

from executors.notify import NotificationRefused, NotifyError
from executors.notify.channels import (
    Email,
    Message,
    SmtpSecurity,
    SmtpServer,
    WebhookCall,
    deliver,
)
from executors.notify.render import Notice, email_message, notice_for, recipients, webhook_payload
from executors.retry import RetryPolicy
from executors.service import ExecutorSettings
from infra.blobstore import BlobKey, BlobStore, blob_key
from infra.catalogue import JobRetryRequested, NotificationFailed, NotificationSent, Notify
from infra.errors import TransientError
from infra.events import Envelope, Payload
from infra.log import EventProducer
from streams.config import Rule

log = structlog.get_logger(__name__)
SOURCE = "notifier"


class NotifySettings(ExecutorSettings):
    """Settings of `talaria notify run`."""

    notify_slots: int = Field(default=2, ge=1, le=64, description="Notifications sent at once.")
    phi_notifications: bool = Field(
        default=False, description="Let templates see patient name, MRN and accession number."
    )
    email_from: str = "talaria@localhost"
    smtp_host: str = "localhost"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_security: SmtpSecurity = "none"
    smtp_username: str = ""
    smtp_password: SecretStr | None = None
    smtp_timeout_s: float = Field(default=30.0, gt=0)
    notify_ca_file: Path | None = Field(
        default=None, description="Extra CA certificates for webhooks and SMTP (a hospital CA)."
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    notify_retry_max_attempts: int = Field(default=5, ge=1)
    notify_retry_first_delay_s: float = Field(default=30.0, ge=0)
    notify_retry_max_delay_s: float = Field(default=600.0, ge=0)

    def smtp_server(self) -> SmtpServer:
        return SmtpServer(
            host=self.smtp_host,
            port=self.smtp_port,
            security=self.smtp_security,
            username=self.smtp_username,
            password=self.smtp_password.get_secret_value() if self.smtp_password else "",
            timeout_s=self.smtp_timeout_s,
            ca_file=self.notify_ca_file,
        )

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.notify_retry_max_attempts,
            first_delay_s=self.notify_retry_first_delay_s,
            max_delay_s=self.notify_retry_max_delay_s,
        )


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How one channel of one attempt went; `error` is None when it was sent."""

    channel: str
    error: NotifyError | None = None


def compose(rule: Rule, notice: Notice, *, sender: str) -> list[Message | Outcome]:
    """The rule's messages, or the outcome of a channel whose template cannot render."""
    composed: list[Message | Outcome] = []
    if rule.notification_webhook:
        try:
            payload = webhook_payload(rule, notice)
            composed.append(WebhookCall(url=rule.notification_webhook, payload=payload))
        except NotifyError as error:
            composed.append(Outcome(channel="webhook", error=error))
    for address in recipients(rule):
        try:
            message = email_message(rule, notice, sender=sender, recipient=address)
            composed.append(Email(message=message))
        except NotifyError as error:
            composed.append(Outcome(channel=f"email:{address}", error=error))
    return composed


def outcome_events(
    command: Notify, outcomes: Sequence[Outcome], *, policy: RetryPolicy, now: datetime
) -> list[Payload]:
    """The facts of one attempt, then the retry command if a channel may still succeed."""
    retriable = [o.channel for o in outcomes if isinstance(o.error, TransientError)]
    retry_at = policy.next_attempt(command.attempt, now=now) if retriable else None
    sent = [
        NotificationSent(
            job_id=command.job_id,
            channel=o.channel,
            trigger=command.trigger,
            attempt=command.attempt,
        )
        for o in outcomes
        if o.error is None
    ]
    failed = [
        NotificationFailed(
            job_id=command.job_id,
            channel=o.channel,
            trigger=command.trigger,
            reason=str(o.error),
            attempt=command.attempt,
            will_retry=retry_at is not None and o.channel in retriable,
            next_attempt_at=retry_at if o.channel in retriable else None,
        )
        for o in outcomes
        if o.error is not None
    ]
    retry: list[Payload] = []
    if retry_at is not None:
        update = {"attempt": command.attempt + 1, "not_before": retry_at, "channels": retriable}
        retry.append(command.model_copy(update=update))
    return [*sent, *failed, *retry]


def command_key(job_id: str) -> BlobKey:
    return blob_key("jobs", job_id, "notify", "command.json")


def sent_key(job_id: str, channel: str) -> BlobKey:
    digest = hashlib.sha256(channel.encode()).hexdigest()[:32]
    return blob_key("jobs", job_id, "notify", f"sent-{digest}")


class Notifier:
    """Carries out notification commands; safe to call again for the same command."""

    def __init__(
        self,
        settings: NotifySettings,
        *,
        producer: EventProducer,
        store: BlobStore,
        rules: Callable[[str], Rule | None],
        stop: threading.Event,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._server = settings.smtp_server()
        self._policy = settings.retry_policy()
        self._producer = producer
        self._store = store
        self._rules = rules
        self._stop = stop
        self._clock = clock

    def handle_command(self, envelope: Envelope) -> None:
        """A first attempt, a scheduled retry or an operator's retry, from a lane topic."""
        command = envelope.payload
        if not isinstance(command, Notify):
            return
        if command.attempt == 1 and not self._store.exists(command_key(command.job_id)):
            self._store.put(command_key(command.job_id), command.model_dump_json().encode())
        self._wait_until_due(command)
        outcomes = self._attempt(command)
        if not outcomes:
            log.info("every channel already sent", job_id=command.job_id)
            return
        events = outcome_events(command, outcomes, policy=self._policy, now=self._clock())
        self._producer.publish_all(
            envelope.caused(payload, source=SOURCE, subject=command.job_id) for payload in events
        )

    def handle_operation(self, envelope: Envelope) -> None:
        """`JobRetryRequested` for a notification job: send its unsent channels again."""
        request = envelope.payload
        if not isinstance(request, JobRetryRequested):
            return
        if not self._store.exists(command_key(request.job_id)):
            return  # not a notification job
        original = Notify.model_validate_json(self._store.get(command_key(request.job_id)))
        again = original.model_copy(update={"attempt": 1, "not_before": None, "channels": []})
        self._producer.publish(envelope.caused(again, source=SOURCE, subject=request.job_id))

    def _attempt(self, command: Notify) -> list[Outcome]:
        rule = self._rules(command.rule)
        if rule is None:
            return [Outcome(channel="rule", error=NotificationRefused("rule no longer exists"))]
        if not rule.notifies:
            refused = NotificationRefused("rule has no webhook or email any more")
            return [Outcome(channel="rule", error=refused)]
        notice = notice_for(command, phi_enabled=self._settings.phi_notifications)
        outcomes = []
        for item in compose(rule, notice, sender=self._settings.email_from):
            if command.channels and item.channel not in command.channels:
                continue
            if self._store.exists(sent_key(command.job_id, item.channel)):
                continue
            outcome = item if isinstance(item, Outcome) else self._send(command, item)
            outcomes.append(outcome)
        return outcomes

    def _send(self, command: Notify, message: Message) -> Outcome:
        bound = log.bind(job_id=command.job_id, channel=message.channel, attempt=command.attempt)
        try:
            deliver(
                message,
                server=self._server,
                timeout_s=self._settings.webhook_timeout_s,
                ca_file=self._settings.notify_ca_file,
            )
        except NotifyError as error:
            bound.warning("notification failed", reason=str(error))
            return Outcome(channel=message.channel, error=error)
        self._store.put(sent_key(command.job_id, message.channel), message.channel.encode())
        bound.info("notification sent", trigger=command.trigger)
        return Outcome(channel=message.channel)

    def _wait_until_due(self, command: Notify) -> None:
        if command.not_before is None:
            return
        wait_s = (command.not_before - self._clock()).total_seconds()
        if wait_s > 0 and self._stop.wait(wait_s):
            raise TransientError("stopping before a scheduled retry")
