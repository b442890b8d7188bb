"""The local stack: a managed single-node broker plus the topic catalogue.

`talaria up` grows into the supervisor of every service; today it runs the broker and ensures
the topics, and stops the broker on Ctrl-C/SIGTERM.
"""

import signal
import threading

from infra.kafka.broker import BrokerLayout, LocalBroker, fetch_jars
from infra.settings import BrokerSettings


def local_broker(settings: BrokerSettings) -> LocalBroker:
    """The broker this installation manages, with its jars fetched if needed."""
    layout = BrokerLayout(
        home=settings.data_dir / "kafka",
        port=settings.kafka_port,
        controller_port=settings.kafka_controller_port,
    )
    return LocalBroker(
        layout, libs=fetch_jars(settings.kafka_cache_dir), heap_mb=settings.kafka_heap_mb
    )


def wait_for_shutdown_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
