"""The local stack: a managed single-node broker, the topic catalogue, and every service.

`talaria up` starts the broker (unless `TALARIA_KAFKA_BOOTSTRAP` names a cluster), ensures the
topics, then supervises the receiver, the streams worker, the dispatcher, the processor (when a
Docker engine answers), the notifier, the cleaner, the query worker and the web UI with its
embedded projector.
Ctrl-C or SIGTERM stops the services in reverse order, then the broker.
"""

import shutil
import signal
import subprocess
import sys
import threading

from infra.kafka.broker import BrokerLayout, LocalBroker, fetch_jars
from infra.settings import BrokerSettings
from infra.supervisor import ServiceSpec


def local_broker(settings: BrokerSettings) -> LocalBroker:
    """The broker this installation manages, with its jars fetched if needed."""
    layout = BrokerLayout(
        home=settings.data_dir / "kafka",
        port=settings.kafka_port,
        controller_port=settings.kafka_controller_port,
    )
    return LocalBroker(
        layout,
        libs=fetch_jars(settings.kafka_cache_dir),
        heap_mb=settings.kafka_heap_mb,
        optimizing_jit=settings.kafka_optimizing_jit,
    )


def docker_answers() -> bool:
    """Whether a Docker engine answers (modules need one)."""
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "version"], capture_output=True, check=False, timeout=20)
    return result.returncode == 0


def service_specs(*, with_processor: bool) -> list[ServiceSpec]:
    """Every service of the local stack, in start order (the UI last: it needs the others'
    events to show anything)."""
    talaria = [sys.executable, "-m", "ui"]
    services = [
        ("receiver", "ingest"),
        ("streams", "streams"),
        ("dispatcher", "dispatch"),
        ("processor", "process"),
        ("notifier", "notify"),
        ("cleaner", "cleanup"),
        ("query", "query"),
        ("ui", "ui"),
    ]
    return [
        ServiceSpec(name=name, command=[*talaria, group, "run"])
        for name, group in services
        if with_processor or name != "processor"
    ]


def wait_for_shutdown_signal() -> None:
    """Block until SIGINT or SIGTERM (services that run in the foreground)."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
