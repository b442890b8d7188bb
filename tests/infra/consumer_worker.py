"""A consumer process for the kill-and-resume story: writes each handled job id to a file.

Run as `python -m tests.infra.consumer_worker BOOTSTRAP PREFIX GROUP OUTFILE RUN`.
"""

import os
import signal
import sys
import time

from infra.catalogue import DispatchStarted
from infra.events import Envelope
from infra.log import ConsumerLoop, EventProducer
from infra.settings import LogSettings
from infra.topics import Topic


def main() -> None:
    bootstrap, prefix, group, outfile, run = sys.argv[1:6]
    settings = LogSettings(
        kafka_bootstrap=bootstrap,
        topic_prefix=prefix,
        consumer_session_timeout_ms=6000,
        consumer_heartbeat_ms=1000,
        consumer_max_poll_interval_ms=10_000,
    )
    out = open(outfile, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def handle(envelope: Envelope) -> None:
        assert isinstance(envelope.payload, DispatchStarted)
        out.write(f"{run} {envelope.payload.job_id}\n")
        time.sleep(0.0002)  # slow enough that the kill lands mid-stream

    producer = EventProducer(settings, client_id=f"worker-{os.getpid()}")
    loop = ConsumerLoop(
        settings,
        group_id=group,
        topics=[Topic.JOBS],
        handle=handle,
        producer=producer,
        max_batch=100,
    )
    signal.signal(signal.SIGTERM, lambda *_: loop.stop_requested.set())
    loop.run()
    producer.close()


if __name__ == "__main__":
    main()
