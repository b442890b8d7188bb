"""Notifications: a rule's webhook and emails, sent for reception, completion and error.

`render.py` turns a `Notify` command and its rule into messages with mercure's template variables
(pure); `channels.py` carries them (HTTP POST, SMTP); `notifier.py` runs a job: one outcome event
per channel (`NotificationSent`, `NotificationFailed`), backoff retries of what failed for now,
and a marker per sent channel in the blob store so a redelivered command sends nothing twice.

Errors (retry policy keys off the class)::

    NotifyError                 base
    ├── ChannelUnavailable      transient: connection refused, timeout, HTTP 408/425/429/5xx,
    │                           SMTP 4xx; retried with backoff
    └── NotificationRefused     permanent: HTTP 3xx/4xx, SMTP 5xx, bad credentials, a TLS
        │                       certificate that does not verify; goes to the failure queue
        └── TemplateInvalid     permanent: a template that does not render, or a webhook payload
                                that is not a JSON object once rendered
"""

from infra.errors import PermanentError, TalariaError, TransientError


class NotifyError(TalariaError):
    """Base of every notification failure."""


class ChannelUnavailable(NotifyError, TransientError):
    """The webhook or mail server could not take the message now."""


class NotificationRefused(NotifyError, PermanentError):
    """The receiving end refused the message in a way a retry will not change."""


class TemplateInvalid(NotificationRefused):
    """The rule's template cannot produce a message."""
