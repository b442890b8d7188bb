"""What the UI process holds open: producer, config view, projections, intake, auth helpers.

In embedded chDB mode the projector runs here as a thread, because only one process may open
the chDB folder (the UI's queries and the projector's writes share it).
"""

import os
import secrets
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import structlog

from infra.events import Envelope
from infra.log import EventProducer
from ingest.intake import Intake
from ingest.service import open_intake
from projections.projector import Projector
from projections.store import ClickHouse
from projections.stuck import StuckWatch
from streams.view import ConfigUnavailable
from ui.security import LoginThrottle, SessionCodec
from ui.settings import UiSettings
from ui.users import Role, Sealer, create_user
from ui.view import UiView

log = structlog.get_logger(__name__)

FIRST_ADMIN = "admin"
VIEW_READY_TIMEOUT_S = 60.0


def source_name() -> str:
    """The envelope `source` of what this process publishes."""
    return f"ui@{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, kw_only=True)
class Services:
    settings: UiSettings
    producer: EventProducer
    view: UiView
    store: ClickHouse
    projector: Projector | None
    intake: Intake
    sealer: Sealer
    sessions: SessionCodec
    throttle: LoginThrottle
    source: str

    def publish(self, envelopes: Iterable[Envelope]) -> None:
        """Write events to the log; returns once the broker acknowledged every one."""
        self.producer.publish_all(envelopes)


@contextmanager
def open_services(settings: UiSettings) -> Iterator[Services]:
    """Everything the app needs, started; stopped in reverse order at exit."""
    secret = settings.secret_key.get_secret_value()
    store = ClickHouse.open(settings.clickhouse())
    store.migrate()
    view = UiView(settings)
    view.start()
    producer = EventProducer(settings, client_id="ui")
    projector = None
    if settings.embedded_projector:
        projector = Projector(
            settings,
            store=store,
            producer=producer,
            batch=settings.projector_batch,
            cache_rows=settings.projector_cache_rows,
        )
        projector.start()
    watch = StuckWatch(store, idle=timedelta(minutes=settings.stuck_after_minutes))
    watch.start()
    intake_settings = settings
    if settings.journal_dir is None:  # not the receiver's journal: another process owns it
        intake_settings = settings.model_copy(update={"journal_dir": settings.data_dir / "ui"})
    try:
        if not view.ready.wait(VIEW_READY_TIMEOUT_S):
            raise ConfigUnavailable("the config topic could not be read in time")
        with open_intake(intake_settings) as intake:
            yield Services(
                settings=settings,
                producer=producer,
                view=view,
                store=store,
                projector=projector,
                intake=intake,
                sealer=Sealer(secret),
                sessions=SessionCodec(secret, max_age_s=settings.session_max_age_s),
                throttle=LoginThrottle(
                    max_failures=settings.login_max_failures, window_s=settings.login_window_s
                ),
                source=source_name(),
            )
    finally:
        watch.stop()
        if projector is not None:
            projector.stop()
        producer.close()
        view.stop()
        store.close()


def ensure_first_admin(services: Services) -> str | None:
    """Create `admin` (password must change at first login) if the log holds no user.

    Returns the generated password, for the operator's console, or None when no user was
    created or the password came from TALARIA_INITIAL_ADMIN_PASSWORD.
    """
    if services.view.users:
        return None
    configured = services.settings.initial_admin_password
    password = configured.get_secret_value() if configured else secrets.token_urlsafe(12)
    services.publish(
        [
            create_user(
                sealer=services.sealer,
                name=FIRST_ADMIN,
                role=Role.ADMIN,
                password=password,
                must_change_password=True,
                actor="system",
                source=services.source,
            )
        ]
    )
    services.view.settle(lambda: FIRST_ADMIN in services.view.users)
    log.info("first-run admin created", user=FIRST_ADMIN)
    return None if configured else password
