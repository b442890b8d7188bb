"""Real servers decide what a failed send is: for now (retried) or for good (failure queue)."""

from email.message import EmailMessage

import pytest

from executors.notify import ChannelUnavailable, NotificationRefused
from executors.notify.channels import Email, SmtpServer, WebhookCall, post_webhook, send_email
from tests.executors.notify.conftest import MailServer, WebhookServer
from tests.support import free_port


@pytest.mark.parametrize(
    ("status", "error"),
    [(503, ChannelUnavailable), (429, ChannelUnavailable), (404, NotificationRefused)],
)
def test_a_webhook_error_status_is_transient_or_permanent_by_its_class(
    webhook: WebhookServer, status: int, error: type[Exception]
) -> None:
    webhook.answers = [status]
    with pytest.raises(error, match=str(status)):
        post_webhook(WebhookCall(url=webhook.url, payload={}), timeout_s=5, ca_file=None)


def test_a_webhook_nobody_listens_on_is_tried_again_later() -> None:
    call = WebhookCall(url=f"http://127.0.0.1:{free_port()}/", payload={})
    with pytest.raises(ChannelUnavailable):
        post_webhook(call, timeout_s=5, ca_file=None)


def email() -> Email:
    message = EmailMessage()
    message["Subject"], message["From"], message["To"] = "hi", "t@h.org", "a@h.org"
    message.set_content("body")
    return Email(message=message)


@pytest.mark.parametrize(
    ("reply", "error"),
    [("451 4.3.0 try later", ChannelUnavailable), ("554 5.7.1 rejected", NotificationRefused)],
)
def test_an_smtp_reply_code_decides_whether_mail_is_retried(
    mail_server: MailServer, reply: str, error: type[Exception]
) -> None:
    mail_server.replies = [reply]
    with pytest.raises(error, match=reply[:3]):
        send_email(email(), server=SmtpServer(host="127.0.0.1", port=mail_server.port))
    send_email(email(), server=SmtpServer(host="127.0.0.1", port=mail_server.port))
    assert [m["To"] for m in mail_server.received] == ["a@h.org"]
