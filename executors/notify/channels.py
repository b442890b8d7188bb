"""Carrying notifications: an HTTP POST to a webhook, an email through an SMTP server.

Each send raises `ChannelUnavailable` when a later attempt may succeed and
`NotificationRefused` when it will not (see the package docstring).
"""

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Literal

import httpx
from pydantic import JsonValue

from executors.notify import ChannelUnavailable, NotificationRefused, NotifyError

SmtpSecurity = Literal["none", "starttls", "tls"]
_RETRIED_HTTP: frozenset[int] = frozenset({408, 425, 429})


@dataclass(frozen=True, kw_only=True)
class WebhookCall:
    """A JSON object to POST to a URL."""

    url: str
    payload: JsonValue
    channel: str = "webhook"


@dataclass(frozen=True, kw_only=True)
class Email:
    """One email to one recipient; its channel is "email:<recipient>"."""

    message: EmailMessage

    @property
    def channel(self) -> str:
        return f"email:{self.message['To']}"


Message = WebhookCall | Email


@dataclass(frozen=True, kw_only=True)
class SmtpServer:
    """Where emails go, and how to log in."""

    host: str
    port: int
    security: SmtpSecurity = "none"
    username: str = ""
    password: str = ""
    timeout_s: float = 30.0
    ca_file: Path | None = None


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """A verifying TLS context; trusting `ca_file` too (a hospital's own CA) when given."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def post_webhook(call: WebhookCall, *, timeout_s: float, ca_file: Path | None) -> None:
    """POST the payload; any 2xx answer is success."""
    try:
        with httpx.Client(timeout=timeout_s, verify=tls_context(ca_file)) as client:
            response = client.post(call.url, json=call.payload)
    except ssl.SSLCertVerificationError as error:
        raise NotificationRefused(f"webhook certificate does not verify: {error}") from error
    except httpx.HTTPError as error:
        raise ChannelUnavailable(f"webhook unreachable: {type(error).__name__}") from error
    status = response.status_code
    if 200 <= status < 300:
        return
    reason = f"webhook answered {status} {response.reason_phrase}"
    if status >= 500 or status in _RETRIED_HTTP:
        raise ChannelUnavailable(reason)
    raise NotificationRefused(reason)


def send_email(email: Email, *, server: SmtpServer) -> None:
    """Hand the email to the SMTP server (STARTTLS or implicit TLS when configured)."""
    try:
        with _connect(server) as smtp:
            if server.security == "starttls":
                smtp.starttls(context=tls_context(server.ca_file))
            if server.username:
                smtp.login(server.username, server.password)
            smtp.send_message(email.message)
    except smtplib.SMTPRecipientsRefused as error:
        codes = [code for code, _ in error.recipients.values()]
        raise _by_code(min(codes, default=550), f"recipient refused: {error.recipients}") from error
    except smtplib.SMTPResponseException as error:
        raw = error.smtp_error
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        raise _by_code(error.smtp_code, f"mail server answered {error.smtp_code} {text}") from error
    except (smtplib.SMTPNotSupportedError, ssl.SSLCertVerificationError) as error:
        raise NotificationRefused(f"mail server: {error}") from error
    except (smtplib.SMTPException, OSError) as error:
        raise ChannelUnavailable(f"mail server unreachable: {error}") from error


def _connect(server: SmtpServer) -> smtplib.SMTP:
    if server.security == "tls":
        return smtplib.SMTP_SSL(
            server.host,
            server.port,
            timeout=server.timeout_s,
            context=tls_context(server.ca_file),
        )
    return smtplib.SMTP(server.host, server.port, timeout=server.timeout_s)


def _by_code(code: int, reason: str) -> NotifyError:
    """SMTP 4xx is a temporary failure (RFC 5321 §4.2.1), anything else is not."""
    return ChannelUnavailable(reason) if 400 <= code < 500 else NotificationRefused(reason)


def deliver(
    message: Message, *, server: SmtpServer, timeout_s: float, ca_file: Path | None
) -> None:
    """Send `message` by its channel."""
    if isinstance(message, WebhookCall):
        post_webhook(message, timeout_s=timeout_s, ca_file=ca_file)
    else:
        send_email(message, server=server)
