"""Choosing the ClickHouse backend from one setting. There is no modern ClickHouse server on the
test machines, so the server path is tested as far as parsing, validation and connecting to a
port where nothing answers."""

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from projections.errors import StoreUnavailable
from projections.settings import ProjectionSettings
from projections.store import ClickHouse
from tests.support import free_port


def test_the_default_is_embedded_chdb_under_the_data_dir() -> None:
    target = ProjectionSettings(data_dir=Path("/srv/talaria")).clickhouse()
    assert (target.backend, target.path, target.database) == (
        "chdb",
        Path("/srv/talaria/clickhouse"),
        "talaria",
    )


def test_a_chdb_url_names_the_folder() -> None:
    target = ProjectionSettings(clickhouse_url="chdb:///var/lib/ch").clickhouse()
    assert (target.backend, target.path) == ("chdb", Path("/var/lib/ch"))


def test_a_server_url_carries_host_port_credentials_database_and_tls() -> None:
    target = ProjectionSettings(
        clickhouse_url="https://talaria:s%40cret@ch.example.org:9443/imaging"
    ).clickhouse()
    assert (target.backend, target.host, target.port, target.secure) == (
        "server",
        "ch.example.org",
        9443,
        True,
    )
    assert (target.username, target.password, target.database) == ("talaria", "s@cret", "imaging")
    assert "s@cret" not in target.describe()
    plain = ProjectionSettings(clickhouse_url="http://ch:8123").clickhouse()
    assert (plain.port, plain.secure, plain.username, plain.database) == (
        8123,
        False,
        "default",
        "talaria",
    )


@pytest.mark.parametrize(
    "url", ["ftp://ch/db", "mysql://ch:3306/db", "http://ch:8123/bad-name", "http://ch/1x"]
)
def test_unusable_urls_are_refused_at_start(url: str) -> None:
    with pytest.raises(ValidationError):
        ProjectionSettings(clickhouse_url=url)


def test_a_server_that_does_not_answer_is_a_transient_failure() -> None:
    settings = ProjectionSettings(clickhouse_url=f"http://127.0.0.1:{free_port()}/talaria")
    with pytest.raises(StoreUnavailable):
        ClickHouse.open(settings.clickhouse())


def test_a_second_process_on_the_same_chdb_folder_is_told_the_folder_is_busy(
    store: ClickHouse, chdb_folder: Path
) -> None:
    opener = (
        "from pathlib import Path\n"
        "from projections.errors import StoreBusy\n"
        "from tests.projections.conftest import open_store\n"
        "try:\n"
        f"    open_store(Path({str(chdb_folder)!r}))\n"
        "except StoreBusy as error:\n"
        "    print('busy:', error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", opener],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )
    assert "busy: cannot open chDB in" in result.stdout, result.stderr[-2000:]
