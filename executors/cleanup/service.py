"""`talaria cleanup run`: the cleaner in the executor frame (log, blob store, config view)."""

import threading

from executors.cleanup.cleaner import Cleaner, CleanupSettings, LedgerFollower
from executors.service import ExecutorService

NAME = "cleaner"


class CleanupService(ExecutorService):
    """An executor without command lanes: a log follower and a sweep on threads of its own.

    The sweeps pause while the queue "cleanup" is suspended (`QueueSuspended`).
    """

    def __init__(self, settings: CleanupSettings) -> None:
        super().__init__(settings, name=NAME, build_loops=lambda _service: [])
        self.follower = LedgerFollower(settings)
        self.cleaner = Cleaner(
            settings,
            follower=self.follower,
            producer=self.producer,
            store=self.store,
            suspended=lambda: "cleanup" in self.view.suspended_queues,
        )
        self._sweeps = threading.Thread(
            target=self.cleaner.run, args=(self.stop_requested,), name="cleaner-sweeps"
        )

    def start(self) -> "CleanupService":
        super().start()
        self.follower.start()
        self._sweeps.start()
        return self

    def stop(self) -> None:
        self.stop_requested.set()
        if self._sweeps.is_alive():
            self._sweeps.join()
        self.follower.stop()
        super().stop()
