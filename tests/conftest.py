"""Fixtures for every test package: a real Kafka broker and isolated topic sets."""

import gc
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.admin import ensure_topics
from infra.kafka.broker import BrokerLayout, LocalBroker, fetch_jars
from infra.settings import LogSettings
from tests.support import free_port, serving

KAFKA_CACHE = Path.home() / ".cache" / "talaria"


def start_broker(home: Path) -> LocalBroker:
    """A real single-node broker on free ports with its data under `home`."""
    layout = BrokerLayout(home=home, port=free_port(), controller_port=free_port())
    broker = LocalBroker(layout, libs=fetch_jars(KAFKA_CACHE), heap_mb=384)
    broker.start()
    return broker


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """One broker for the whole test session; each test isolates itself by topic prefix."""
    broker = start_broker(tmp_path_factory.mktemp("kafka"))
    yield broker
    # Closed clients still hold librdkafka handles until collected; collected now, they do not
    # fill the end of the run with reconnection errors once the broker is gone.
    gc.collect()
    broker.stop()


def settings_for(broker: LocalBroker, **overrides: object) -> LogSettings:
    """Log settings for `broker` with a topic prefix of their own, topics created."""
    settings = LogSettings(
        kafka_bootstrap=broker.layout.bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        consumer_session_timeout_ms=6000,
        consumer_heartbeat_ms=1000,
        consumer_max_poll_interval_ms=10_000,
        **overrides,  # type: ignore[arg-type]
    )
    ensure_topics(settings)
    return settings


@pytest.fixture
def log_settings(kafka_broker: LocalBroker) -> LogSettings:
    """Settings for the session broker with topics no other test sees."""
    return settings_for(kafka_broker)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3 API (moto's server mode) on a free local port, for the whole session."""
    port = free_port()
    moto_server = Path(sys.executable).parent / "moto_server"
    with serving([str(moto_server), "-H", "127.0.0.1", "-p", str(port)], port=port):
        yield f"http://127.0.0.1:{port}"
