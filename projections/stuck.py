"""The "stuck job" alert: an active job that made no progress for a while.

`StuckWatch` runs on a daemon thread of the process that reads the projections (the UI): every
`every_s` it asks for the jobs queued, running or retrying with no event for `idle` (and no retry
scheduled within it), sets the `talaria_stuck_jobs` gauge, and logs a warning "job stuck" with
the job, study and series ids for each job that became stuck since the last look.
"""

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog
from prometheus_client import Gauge

from infra.errors import TalariaError
from projections import queries
from projections.store import ClickHouse

log = structlog.get_logger(__name__)
STUCK = Gauge("talaria_stuck_jobs", "Active jobs without progress for the stuck-job period.")


class StuckWatch:
    """Looks for stuck jobs now and then; `check()` is one look."""

    def __init__(
        self,
        store: ClickHouse,
        *,
        idle: timedelta,
        every_s: float = 30.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._idle = idle
        self._every_s = every_s
        self._clock = clock
        self._reported: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stuck-watch", daemon=True)

    def check(self) -> list[queries.Row]:
        """The stuck jobs now; warns about those not reported before."""
        stuck = queries.stuck_jobs(self._store, now=self._clock(), idle=self._idle)
        STUCK.set(len(stuck))
        keys = {(row["job_id"], row["target"]) for row in stuck}
        for row in stuck:
            if (row["job_id"], row["target"]) not in self._reported:
                log.warning(
                    "job stuck",
                    job_id=row["job_id"],
                    kind=row["kind"],
                    target=row["target"],
                    state=row["state"],
                    study_uid=row["study_uid"],
                    series_uids=row["series_uids"],
                    idle_since=row["updated_at"].isoformat(),
                )
        self._reported = keys
        return stuck

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self.check()
            except TalariaError as error:  # the store unreachable, say: look again later
                log.warning("stuck jobs not checked", error=str(error))
