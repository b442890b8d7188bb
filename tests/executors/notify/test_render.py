"""What a notification says: mercure's variables, PHI only when enabled, templates in a sandbox."""

import json

import pytest

from executors.notify import TemplateInvalid
from executors.notify.render import (
    PAYLOAD_TEMPLATES,
    email_message,
    notice_for,
    recipients,
    webhook_payload,
)
from infra.catalogue import Notify
from streams.config import Rule

TAGS = {
    "PatientName": 'O"Brien^Anne',
    "PatientID": "MRN-4711",
    "AccessionNumber": "ACC-99",
    "DeviceSerialNumber": "SN-1",
}


def command(trigger: str = "completion", **details: object) -> Notify:
    return Notify(
        study_uid="1.2.3",
        job_id="job-7",
        rule="stroke",
        trigger=trigger,
        details=details,
        tags=TAGS,
    )


def rule(**fields: object) -> Rule:
    return Rule.model_validate({"notification_webhook": "http://127.0.0.1:1/h", **fields})


def test_a_payload_template_sees_mercures_variables_and_no_patient_unless_enabled() -> None:
    template = (
        '"rule": "{{ rule }}", "event": "{{ event }}", "task": "@task_id@", '
        '"details": "{{ details }}", "device": "{{ DeviceSerialNumber }}", '
        '"patient": "{{ patient_name }}", "mrn": "{{ phi_data.mrn }}", "acc": "{{ acc }}"'
    )
    notice = notice_for(command(text="volume: 12 ml"), phi_enabled=False)
    assert webhook_payload(rule(notification_payload=template), notice) == {
        "rule": "stroke",
        "event": "COMPLETED",
        "task": "job-7",
        "details": "volume: 12 ml",
        "device": "SN-1",
        "patient": "UNKNOWN",
        "mrn": "UNKNOWN",
        "acc": "UNKNOWN",
    }
    shown = webhook_payload(
        rule(notification_payload=template), notice_for(command(), phi_enabled=True)
    )
    assert isinstance(shown, dict)
    # A quote in a tag cannot break the JSON: every printed value is escaped.
    assert (shown["patient"], shown["mrn"], shown["acc"]) == ('O"Brien^Anne', "MRN-4711", "ACC-99")


def test_the_body_goes_into_chat_templates_as_one_escaped_string() -> None:
    body = 'Rule {{ rule }} said "{{ details }}"\nsecond line'
    notice = notice_for(command("error", reason="module crashed"), phi_enabled=False)
    text = 'Rule stroke said "module crashed"\nsecond line'
    slack = webhook_payload(
        rule(notification_payload=PAYLOAD_TEMPLATES["slack"], notification_payload_body=body),
        notice,
    )
    assert slack == {"text": text}
    teams = webhook_payload(
        rule(notification_payload=PAYLOAD_TEMPLATES["teams"], notification_payload_body=body),
        notice,
    )
    assert json.dumps(teams).count("module crashed") == 1
    assert teams["attachments"][0]["content"]["body"][0]["text"] == text  # type: ignore[index,call-overload]


def test_an_empty_payload_sends_mercures_default_text() -> None:
    payload = webhook_payload(rule(), notice_for(command("reception"), phi_enabled=False))
    assert payload == {"text": "Rule stroke triggered RECEIVED\n"}


@pytest.mark.parametrize(
    "template",
    [
        '"x": "{{ rule.__class__.__mro__[1].__subclasses__() }}"',  # the sandbox says no
        '"x": "{{ rule }"',  # does not parse
        '"x": {{ rule }}',  # not JSON once rendered
        '["a list"]',
    ],
)
def test_a_template_that_cannot_make_a_json_object_is_refused_for_good(template: str) -> None:
    with pytest.raises(TemplateInvalid):
        webhook_payload(
            rule(notification_payload=template), notice_for(command(), phi_enabled=False)
        )


def test_an_html_email_escapes_what_it_prints_and_has_mercures_subject() -> None:
    email_rule = Rule(
        notification_email="a@example.org, b@example.org",
        notification_email_type="html",
        notification_email_body="<p>{{ patient_name }}: {{ details }}</p>",
    )
    assert recipients(email_rule) == ["a@example.org", "b@example.org"]
    notice = notice_for(command(text="<b>ok</b>"), phi_enabled=True)
    message = email_message(email_rule, notice, sender="talaria@h.org", recipient="a@example.org")
    assert message["Subject"] == "[Talaria] Rule stroke: COMPLETED"
    assert message.get_content_type() == "text/html"
    assert "<p>O&#34;Brien^Anne: &lt;b&gt;ok&lt;/b&gt;</p>" in message.get_content()
