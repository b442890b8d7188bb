"""The cleaner: follows the log into a `Ledger` and purges done series after their retention.

The cleaner needs every series and job, whatever partition they are on, so it reads its topics
whole from the beginning without a consumer group (as the config view does) and deletes
nothing until it has read up to where the log ended when it started. Every `cleanup_interval_s`
a sweep runs if the queue "cleanup" is not suspended and either the off-peak window is open or
the blob store's disk is past the emergency watermark; in an emergency the retention period is
not waited for, the oldest settled series go first and the sweep stops once the disk is below
the watermark again. Each purged series gets one `BlobsPurged`. Run one cleaner per blob store.
"""

import shutil
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog
from pydantic import Field

from executors.cleanup import LogUnreadable
from executors.cleanup.ledger import Ledger, Purge, plan_purges
from executors.lanes import OffPeakWindow
from executors.service import ExecutorSettings
from infra.blobstore import BlobStore, FolderBlobStore, parse_key
from infra.catalogue import (
    BlobsPurged,
    DispatchSeries,
    JobCancelled,
    JobRetryRequested,
    ProcessSeries,
)
from infra.errors import TransientError
from infra.events import Envelope
from infra.follow import TopicFollower
from infra.log import EventProducer
from infra.settings import LogSettings
from infra.topics import CommandKind, Lane, Topic, command_topic, topic_name

log = structlog.get_logger(__name__)
SOURCE = "cleaner"

FOLLOWED = (
    Topic.SERIES,
    Topic.JOBS,
    Topic.OPERATIONS,
    Topic.DISPATCH_RETRY,
    *(
        command_topic(kind, lane)
        for kind in (CommandKind.PROCESS, CommandKind.DISPATCH)
        for lane in Lane
    ),
)
_OPERATIONS = frozenset({JobRetryRequested.TYPE, JobCancelled.TYPE})
_COMMANDS = frozenset({ProcessSeries.TYPE, DispatchSeries.TYPE})


class CleanupSettings(ExecutorSettings):
    """Settings of `talaria cleanup run`."""

    retention_s: float = Field(
        default=3 * 24 * 3600, ge=0, description="Keep a done series' blobs this long (3 days)."
    )
    emergency_clean_percent: float = Field(
        default=90, gt=0, le=100, description="Disk use (%) past which the cleaner acts at once."
    )
    cleanup_interval_s: float = Field(default=60, gt=0, description="Time between sweeps.")
    cleanup_purge_failed: bool = Field(
        default=False, description="Purge the inputs of failed jobs too (never of pending ones)."
    )


class LedgerFollower(TopicFollower):
    """Folds the series, jobs and commands topics into a `Ledger`, read whole."""

    def __init__(self, settings: LogSettings) -> None:
        self.ledger = Ledger()
        self.lock = threading.Lock()
        names = {topic: topic_name(topic, prefix=settings.topic_prefix) for topic in FOLLOWED}
        self._wanted_types = {
            names[topic]: _COMMANDS for topic in FOLLOWED if topic.value.startswith("commands.")
        }
        self._wanted_types[names[Topic.OPERATIONS]] = _OPERATIONS
        super().__init__(settings, FOLLOWED, name="cleaner-follower")

    def wants(self, topic: str, type_name: str | None) -> bool:
        # Not another executor's commands, nor an operator action of no concern.
        wanted = self._wanted_types.get(topic)
        return wanted is None or type_name in wanted

    def apply(self, envelope: Envelope) -> None:
        with self.lock:
            self.ledger.apply(envelope)


def disk_use_percent(store: BlobStore) -> float | None:
    """How full the blob store's disk is; None for stores without a disk (S3)."""
    if not isinstance(store, FolderBlobStore):
        return None
    usage = shutil.disk_usage(store.root)
    return 100 * usage.used / usage.total


class Cleaner:
    """Sweeps: decides from the ledger what may go, deletes it, says so on the log."""

    def __init__(
        self,
        settings: CleanupSettings,
        *,
        follower: LedgerFollower,
        producer: EventProducer,
        store: BlobStore,
        suspended: Callable[[], bool],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._window = OffPeakWindow.parse(settings.offpeak_window)
        self._follower = follower
        self._producer = producer
        self._store = store
        self._suspended = suspended
        self._clock = clock

    def run(self, stop: threading.Event) -> None:
        """Sweep every interval until `stop` is set."""
        while not stop.wait(self._settings.cleanup_interval_s):
            try:
                self.sweep()
            except TransientError as error:
                log.warning("sweep ended early", error=str(error))

    def sweep(self) -> list[BlobsPurged]:
        """One pass: purge what may go now; the facts published."""
        if not self._follower.ready.is_set():
            raise LogUnreadable("the log has not been read up to its end yet")
        if self._suspended():
            return []
        now = self._clock()
        emergency = self._past_watermark()
        if not emergency and not self._window.contains(now.astimezone()):
            return []
        with self._follower.lock:
            plan = plan_purges(
                self._follower.ledger,
                now=now,
                retention=timedelta(seconds=self._settings.retention_s),
                purge_failed=self._settings.cleanup_purge_failed,
                emergency=emergency,
            )
        purged = []
        for purge in plan:
            if emergency and not self._past_watermark():
                break
            purged.append(self._purge(purge, emergency=emergency))
        return purged

    def _past_watermark(self) -> bool:
        used = disk_use_percent(self._store)
        return used is not None and used >= self._settings.emergency_clean_percent

    def _purge(self, purge: Purge, *, emergency: bool) -> BlobsPurged:
        deleted = []
        for text in sorted(purge.blobs):
            key = parse_key(text)
            if self._store.delete(key):
                deleted.append(text)
            if isinstance(self._store, FolderBlobStore):
                self._store.prune_empty_folders(key)
        fact = BlobsPurged(
            study_uid=purge.study_uid,
            series_uid=purge.series_uid,
            blob_count=len(deleted),
            bytes_freed=sum(purge.blobs[key] for key in deleted),
            reason="emergency" if emergency else "retention",
            completion_ids=purge.completion_ids,
        )
        envelope = Envelope(payload=fact, source=SOURCE, subject=purge.series_uid)
        self._producer.publish(envelope)
        with self._follower.lock:
            self._follower.ledger.apply(envelope)
        log.info(
            "series purged",
            study_uid=purge.study_uid,
            series_uid=purge.series_uid,
            blobs=fact.blob_count,
            bytes=fact.bytes_freed,
            reason=fact.reason,
        )
        return fact
