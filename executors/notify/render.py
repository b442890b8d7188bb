"""What a notification says: mercure's template variables, rendered in a sandbox (pure).

Templates are Jinja, as in mercure, rendered by a `SandboxedEnvironment` so that a rule editor
cannot reach Python objects. The variables are mercure's: `rule`, `event` (RECEIVED, COMPLETED,
ERROR), `task_id` (the job id), `details` (a module's `__mercure_notification` text, or the
error), `DeviceSerialNumber`, and `acc`, `mrn`, `patient_name` (also as `phi_data.…`), which are
"UNKNOWN" unless PHI notifications are enabled. The webhook payload may also use `body`: the
rendered webhook body. mercure's `@rule@`, `@task_id@` and `@event@` macros still work.

A webhook payload is a JSON object; as mercure stores it without its outer braces, they are added
when missing. Every value a payload template prints is escaped as JSON string content, so
`"{{ patient_name }}"` stays valid JSON whatever the tag holds. An empty payload sends
`{"text": body}`, which Slack, Teams and WebEx incoming webhooks all accept.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Final

from jinja2 import TemplateError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import JsonValue

from executors.notify import TemplateInvalid
from infra.catalogue import Notify
from streams.config import Rule

HIDDEN: Final = "UNKNOWN"
EVENT_NAMES: Final = {"reception": "RECEIVED", "completion": "COMPLETED", "error": "ERROR"}

DEFAULT_BODY: Final = (
    "Rule {{ rule }} triggered {{ event }}\n{% if details %}\nDetails:\n{{ details }}\n{% endif %}"
)
"""mercure's body template, used when a rule leaves its body empty."""

PAYLOAD_TEMPLATES: Final[Mapping[str, str]] = {
    "slack": '{"text": "{{ body }}"}',
    "webex": '{"markdown": "{{ body }}"}',
    "teams": (
        '{"type": "message", "attachments": [{"contentType": '
        '"application/vnd.microsoft.card.adaptive", "content": {"type": "AdaptiveCard", '
        '"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "version": "1.4", '
        '"body": [{"type": "TextBlock", "text": "{{ body }}", "wrap": true}]}}]}'
    ),
}
"""Payloads for the usual chat services, offered by the rule editor."""

_GENERIC_PAYLOAD: Final = '{"text": "{{ body }}"}'
_PHI_TAGS: Final = {"acc": "AccessionNumber", "mrn": "PatientID", "patient_name": "PatientName"}


def _json_string_content(value: object) -> str:
    """`value` as it may stand between the quotes of a JSON string."""
    return json.dumps("" if value is None else str(value), ensure_ascii=False)[1:-1]


_PLAIN = SandboxedEnvironment(autoescape=False, keep_trailing_newline=True)
_HTML = SandboxedEnvironment(autoescape=True, keep_trailing_newline=True)
_JSON = SandboxedEnvironment(autoescape=False, finalize=_json_string_content)


@dataclass(frozen=True, kw_only=True)
class Notice:
    """The facts a notification may mention, before any template."""

    rule: str
    task_id: str
    trigger: str
    details: str
    device_serial_number: str
    phi: Mapping[str, str]

    @property
    def event(self) -> str:
        return EVENT_NAMES.get(self.trigger, self.trigger.upper())

    def variables(self) -> dict[str, Any]:
        """mercure's template variables."""
        return {
            "rule": self.rule,
            "task_id": self.task_id,
            "event": self.event,
            "trigger": self.trigger,
            "details": self.details,
            "DeviceSerialNumber": self.device_serial_number,
            **self.phi,
            "phi_data": dict(self.phi),
        }


def notice_for(command: Notify, *, phi_enabled: bool) -> Notice:
    """The notice of `command`; patient fields stay hidden unless `phi_enabled`."""
    details = command.details
    text = details.get("text") or details.get("reason") or ""
    return Notice(
        rule=command.rule,
        task_id=command.job_id,
        trigger=command.trigger,
        details=str(text),
        device_serial_number=command.tags.get("DeviceSerialNumber", ""),
        phi={
            name: command.tags.get(tag, "") if phi_enabled else HIDDEN
            for name, tag in _PHI_TAGS.items()
        },
    )


def _render(environment: SandboxedEnvironment, template: str, notice: Notice, **extra: Any) -> str:
    text = (
        template.replace("@rule@", notice.rule)
        .replace("@task_id@", notice.task_id)
        .replace("@event@", notice.event)
    )
    try:
        return environment.from_string(text).render(**notice.variables(), **extra)
    except TemplateError as error:
        raise TemplateInvalid(f"template does not render: {error}") from error


def webhook_payload(rule: Rule, notice: Notice) -> JsonValue:
    """The JSON object to POST to the rule's webhook."""
    body = _render(_PLAIN, rule.notification_payload_body or DEFAULT_BODY, notice)
    template = rule.notification_payload.strip() or _GENERIC_PAYLOAD
    if not template.startswith("{"):
        template = "{" + template + "}"
    text = _render(_JSON, template, notice, body=body)
    try:
        payload: JsonValue = json.loads(text)
    except json.JSONDecodeError as error:
        raise TemplateInvalid(f"webhook payload is not JSON once rendered: {error}") from error
    if not isinstance(payload, dict):
        raise TemplateInvalid("webhook payload is not a JSON object")
    return payload


def recipients(rule: Rule) -> list[str]:
    """The rule's email addresses (comma-separated, as in mercure)."""
    return [address.strip() for address in rule.notification_email.split(",") if address.strip()]


def email_message(rule: Rule, notice: Notice, *, sender: str, recipient: str) -> EmailMessage:
    """One email to `recipient`, plain text or HTML as the rule says."""
    html = rule.notification_email_type == "html"
    body = _render(_HTML if html else _PLAIN, rule.notification_email_body or DEFAULT_BODY, notice)
    message = EmailMessage()
    message["Subject"] = f"[Talaria] Rule {notice.rule}: {notice.event}"
    message["From"] = sender
    message["To"] = recipient
    message.set_content(body, subtype="html" if html else "plain")
    return message
