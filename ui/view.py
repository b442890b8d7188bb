"""The UI's view of the config, operations and heartbeats topics: `ConfigView` plus the user
directory and each service instance's latest heartbeat.

One reader thread folds them, so the UI reads rules, targets, modules, suspended queues, users
and service health from the log itself (config is small and must be current to the last write).
`settle` gives read-your-writes: after publishing a change, wait until the view shows it.
"""

import time
from collections.abc import Callable
from datetime import datetime

from infra.catalogue import ServiceHeartbeat, UserDeleted, UserSaved
from infra.events import Envelope
from infra.settings import LogSettings
from infra.topics import Topic
from streams.view import ConfigView
from ui.users import User, fold_user

_USER_EVENTS = frozenset({UserSaved.TYPE, UserDeleted.TYPE})
SETTLE_TIMEOUT_S = 10.0


class UiView(ConfigView):
    """Configuration, forced completions, suspended queues, users and the latest heartbeat of
    each (service, instance), folded from the log."""

    def __init__(self, settings: LogSettings) -> None:
        super().__init__(settings, extra_topics=(Topic.HEARTBEATS,))
        self.users: dict[str, User] = {}
        self.heartbeats: dict[tuple[str, str], tuple[ServiceHeartbeat, datetime]] = {}

    def wants(self, topic: str, type_name: str | None) -> bool:
        return type_name in _USER_EVENTS or super().wants(topic, type_name)

    def apply(self, envelope: Envelope) -> None:
        payload = envelope.payload
        if isinstance(payload, UserSaved | UserDeleted):
            self.users = fold_user(self.users, payload)
        elif isinstance(payload, ServiceHeartbeat):
            # A new dict, not an update: request threads iterate over the one they took.
            key = (payload.service, payload.instance)
            self.heartbeats = {**self.heartbeats, key: (payload, envelope.occurred_at)}
        else:
            super().apply(envelope)

    def settle(self, shown: Callable[[], bool], *, timeout_s: float = SETTLE_TIMEOUT_S) -> bool:
        """Wait until `shown()` (the view holds a change just published); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while not shown():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True
