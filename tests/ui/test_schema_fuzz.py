"""Property-based run against the app's OpenAPI description (schemathesis): valid and invalid
input generated for every operation, sent as a logged-in admin with the CSRF token, never gets
a 500 — bad input is a 4xx with a message — and every event the app published for it decodes."""

import httpx
import pytest
import requests
import schemathesis
from confluent_kafka import Consumer, TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error

from infra.catalogue import CATALOGUE
from infra.events import UndecodableEvent, decode
from infra.settings import LogSettings
from infra.topics import Topic, topic_name
from tests.ui.conftest import Ui
from ui.security import CSRF_HEADER, SESSION_COOKIE
from ui.services import FIRST_ADMIN

pytestmark = pytest.mark.integration

# 8 per operation (positive and negative) keeps the run under 90 s on 2 cores.
EXAMPLES_PER_OPERATION = 8
# Logging out ends the session the run uses; its own tests cover it.
ENDS_THE_SESSION = {("POST", "/api/logout")}


def _keeps_the_session(case: Case) -> bool:
    """Resetting the admin's own password would end the session mid-run."""
    return not (case.path == "/api/users/{name}" and case.path_parameters == {"name": FIRST_ADMIN})


def _session(admin: httpx.Client) -> requests.Session:
    session = requests.Session()
    session.cookies.set(SESSION_COOKIE, admin.cookies[SESSION_COOKIE])
    session.headers[CSRF_HEADER] = admin.headers[CSRF_HEADER]
    return session


def _undecodable(settings: LogSettings, topics: list[Topic]) -> list[str]:
    """Why each record of `topics`, up to their current end, cannot be decoded."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "fuzz"})
    ends: dict[tuple[str, int], int] = {}
    for topic in topics:
        name = topic_name(topic, prefix=settings.topic_prefix)
        for partition in consumer.list_topics(name, timeout=10).topics[name].partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(name, partition), timeout=10)
            if high:
                ends[name, partition] = high
    consumer.assign([TopicPartition(name, partition, 0) for name, partition in ends])
    problems, read = [], dict.fromkeys(ends, 0)
    while any(read[key] < end for key, end in ends.items()):
        for message in consumer.consume(500, timeout=1):
            assert message.error() is None, message.error()
            read[message.topic(), message.partition()] = message.offset() + 1
            try:
                decode(message.value(), message.headers(), CATALOGUE)
            except UndecodableEvent as error:
                problems.append(str(error))
    consumer.close()
    return problems


def test_no_generated_request_gets_a_server_error(ui: Ui, admin: httpx.Client) -> None:
    schema = schemathesis.openapi.from_url(ui.url + "/api/openapi.json")
    schema.validate()
    session = _session(admin)
    operations = [result.ok() for result in schema.get_all_operations()]
    tested = []
    for operation in operations:
        if (operation.method.upper(), operation.path) in ENDS_THE_SESSION:
            continue
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        strategy = st.one_of(operation.as_strategy(mode) for mode in modes)
        strategy = strategy.filter(_keeps_the_session)

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Case) -> None:
            case.call_and_validate(base_url=ui.url, session=session, checks=[not_a_server_error])

        run()
        tested.append(operation.label)
    assert len(tested) >= 30, tested
    still = session.get(ui.url + "/api/session").json()
    assert still["user"] == FIRST_ADMIN, "the run must stay logged in, or it tested only 401s"
    assert _undecodable(ui.settings, [Topic.CONFIG, Topic.OPERATIONS]) == []
