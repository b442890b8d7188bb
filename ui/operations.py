"""Operator actions as events: who did it is the envelope's actor; awaited like config writes."""

from infra.events import Envelope, Payload
from ui.services import Services
from ui.users import User


def act(services: Services, payload: Payload, *, user: User, subject: str) -> None:
    """Publish one operator event for `user`; returns once the broker acknowledged it."""
    services.publish(
        [Envelope(payload=payload, source=services.source, subject=subject, actor=user.name)]
    )
