"""Fixtures of the end-to-end tests: the stack, and `webhook` (an HTTP server keeping the JSON
bodies it received) from the notification tests."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, talaria_up
from tests.executors.notify.conftest import webhook  # noqa: F401 - a fixture for these tests


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with talaria_up(tmp_path) as running:
        yield running
