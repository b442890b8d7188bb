"""The UI's view of the config and operations topics: `ConfigView` plus the user directory.

One reader thread folds both, so the UI reads rules, targets, modules, suspended queues and
users from the log itself (config is small and must be current to the last write). `settle`
gives read-your-writes: after publishing a change, wait until the view shows it.
"""

import time
from collections.abc import Callable

from infra.catalogue import UserDeleted, UserSaved
from infra.events import Envelope
from infra.settings import LogSettings
from streams.view import ConfigView
from ui.users import User, fold_user

_USER_EVENTS = frozenset({UserSaved.TYPE, UserDeleted.TYPE})
SETTLE_TIMEOUT_S = 10.0


class UiView(ConfigView):
    """Configuration, forced completions, suspended queues and users, folded from the log."""

    def __init__(self, settings: LogSettings) -> None:
        super().__init__(settings)
        self.users: dict[str, User] = {}

    def wants(self, topic: str, type_name: str | None) -> bool:
        return type_name in _USER_EVENTS or super().wants(topic, type_name)

    def apply(self, envelope: Envelope) -> None:
        if isinstance(envelope.payload, UserSaved | UserDeleted):
            self.users = fold_user(self.users, envelope.payload)
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
