"""`talaria query run`: the query worker wired to the log, the blob store, the intake and the
config view; one consumer per priority lane (the off-peak lane only in its window)."""

import os
import socket

from executors.dispatch.service import ViewControls
from executors.lanes import OffPeakWindow, PriorityGate, lane_consumers
from executors.query.history import QueryLog
from executors.query.worker import QuerySettings, QueryWorker
from executors.retry import RetryPolicy
from executors.service import ExecutorService
from infra.log import ConsumerLoop
from infra.topics import CommandKind
from ingest.intake import Intake
from ingest.outbox import BrokerOutbox
from ingest.tags import TagReader

GROUP = "query"


def query_service(settings: QuerySettings) -> ExecutorService:
    def build_loops(service: ExecutorService) -> list[ConsumerLoop]:
        controls = ViewControls(service.view)
        source = f"query@{socket.gethostname()}:{os.getpid()}"
        intake = Intake(
            blobs=service.store,
            producer=service.producer,
            outbox=BrokerOutbox(service.producer, timeout_s=settings.publish_timeout_s + 5),
            reader=TagReader(settings.extra_tags),
            source=source,
        )
        worker = QueryWorker(
            producer=service.producer,
            intake=intake,
            open_log=lambda since: QueryLog(settings, since=since),
            target_config=controls.target_config,
            policy=RetryPolicy(
                max_attempts=settings.query_retry_max_attempts,
                first_delay_s=settings.query_retry_first_delay_s,
                max_delay_s=settings.query_retry_max_delay_s,
            ),
            index_dir=settings.query_index_dir,
            stop=service.stop_requested,
        )
        return lane_consumers(
            settings,
            kind=CommandKind.QUERY,
            group_id=GROUP,
            handle=worker.handle,
            producer=service.producer,
            gate=PriorityGate(slots=settings.query_slots),
            window=OffPeakWindow.parse(settings.offpeak_window),
            suspended=lambda lane: (
                controls.suspended(f"query.{lane.value}") or controls.suspended("query")
            ),
        )

    return ExecutorService(settings, name=GROUP, build_loops=build_loops)
