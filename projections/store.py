"""The one access layer to ClickHouse: chDB in-process or a server over HTTP(S), same SQL.

`ClickHouse.open(target)` builds clickhouse-connect clients for the target; nothing else in
Talaria constructs one. Three clients, three sessions: one for the projector's writes, one for
the queries of the UI and API (so a read never queues behind a batch insert), and one pinned
to `readonly=1` for the analytics SQL entry point, where the engine itself refuses writes,
DDL, setting changes and table functions that reach outside the database.

SQL names the database as `{db}` (an identifier checked once here, never user input); values
are always bound parameters (`{name:Type}` placeholders, sent apart from the SQL text).
"""

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import clickhouse_connect
import structlog
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from projections.errors import QueryFailed, QueryRefused, StoreBusy, StoreUnavailable
from projections.schema import BOOKKEEPING, MIGRATIONS
from projections.settings import ClickHouseTarget

log = structlog.get_logger(__name__)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_CODE = re.compile(r"Code: (\d+)")
# chDB refuses a folder another process holds: "Cannot lock file", or (4.4, through
# clickhouse-connect) "Unable to open the chdb engine ... Error initializing EmbeddedServer".
_FOLDER_HELD = re.compile(r"Cannot lock file|Unable to open the chdb engine", re.IGNORECASE)
_READONLY = 164
_TRANSIENT_CODES = frozenset({159, 202, 241, 252, 425})  # timeout, too many queries/parts, memory
# `readonly` last: once it is set, the session may change no other setting.
ANALYTICS_LIMITS = {
    "max_execution_time": "30",
    "max_result_rows": "100000",
    "result_overflow_mode": "break",
    "readonly": "1",
}

Parameters = Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class Rows:
    """A query result: column names and row tuples."""

    columns: tuple[str, ...]
    rows: Sequence[Sequence[Any]]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


@dataclass(frozen=True)
class _Clients:
    writer: Client
    reader: Client
    analyst: Client


class ClickHouse:
    """The projection database: DDL, batch inserts, bound queries, read-only analytics."""

    def __init__(self, target: ClickHouseTarget, clients: _Clients, *, database: str) -> None:
        self.target = target
        self.database = _identifier(database)
        self._clients = clients

    @classmethod
    def open(cls, target: ClickHouseTarget) -> "ClickHouse":
        """Connect to `target` (creating the chDB folder if needed); no schema work yet."""
        try:
            writer = _client(target)
            writer.command(f"CREATE DATABASE IF NOT EXISTS {_identifier(target.database)}")
            clients = _Clients(
                writer=writer,
                reader=_client(target),
                analyst=_client(target, settings=ANALYTICS_LIMITS, database=target.database),
            )
        except (ClickHouseError, RuntimeError) as error:
            if target.backend == "chdb" and _FOLDER_HELD.search(str(error)):
                raise StoreBusy(
                    f"cannot open {target.describe()}: most likely another process (the UI or "
                    "a projector) holds the folder; stop it, or use a ClickHouse server"
                ) from error
            raise StoreUnavailable(f"cannot reach {target.describe()}: {error}") from error
        return cls(target, clients, database=target.database)

    def with_database(self, database: str) -> "ClickHouse":
        """The same connection, addressing another database (a rebuild's fresh tables)."""
        return ClickHouse(self.target, self._clients, database=database)

    def close(self) -> None:
        for client in {id(c): c for c in vars(self._clients).values()}.values():
            client.close()

    # --- schema ---------------------------------------------------------------------------------

    def migrate(self) -> list[int]:
        """Create the database and run the migrations it has not seen; the numbers that ran."""
        self.command("CREATE DATABASE IF NOT EXISTS {db}")
        self.command(BOOKKEEPING)
        done = {row[0] for row in self.select("SELECT number FROM {db}.schema_migrations").rows}
        ran = []
        for migration in MIGRATIONS:
            if migration.number in done:
                continue
            for statement in migration.statements:
                self.command(statement)
            self.insert(
                "schema_migrations",
                [(migration.number, migration.name, datetime.now(UTC))],
                columns=("number", "name", "applied_at"),
            )
            log.info("migration applied", number=migration.number, name=migration.name)
            ran.append(migration.number)
        return ran

    # --- statements -----------------------------------------------------------------------------

    def command(self, sql: str, parameters: Parameters | None = None) -> None:
        """Run one statement that returns nothing useful (DDL, EXCHANGE, DROP)."""
        with _translated(sql):
            self._clients.writer.command(self._sql(sql), parameters=dict(parameters or {}))

    def insert(self, table: str, rows: Sequence[Sequence[Any]], *, columns: Sequence[str]) -> None:
        """Write `rows` into `table` of this database in one batch."""
        if not rows:
            return
        with _translated(table):
            self._clients.writer.insert(
                table, rows, column_names=list(columns), database=self.database
            )

    def select(self, sql: str, parameters: Parameters | None = None) -> Rows:
        """Run a bound query on the reading session."""
        with _translated(sql):
            result = self._clients.reader.query(self._sql(sql), parameters=dict(parameters or {}))
        return Rows(columns=tuple(result.column_names), rows=result.result_rows)

    def select_for_write(self, sql: str, parameters: Parameters | None = None) -> Rows:
        """Run a bound query on the writer's session (the projector loading its fold rows)."""
        with _translated(sql):
            result = self._clients.writer.query(self._sql(sql), parameters=dict(parameters or {}))
        return Rows(columns=tuple(result.column_names), rows=result.result_rows)

    def analytics(self, sql: str) -> Rows:
        """Run an analyst's SQL as is, on the read-only session; writes are refused by the engine.

        The current database is the installation's, so `SELECT count() FROM series` works.
        """
        with _translated(sql):
            result = self._clients.analyst.query(sql)
        return Rows(columns=tuple(result.column_names), rows=result.result_rows)

    def _sql(self, sql: str) -> str:
        return sql.replace("{db}", self.database)


def _identifier(name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        raise QueryFailed(f"{name!r} is not a database name")
    return name


def _client(
    target: ClickHouseTarget,
    *,
    settings: Mapping[str, str] | None = None,
    database: str | None = None,
) -> Client:
    extra = dict(settings or {})
    if target.backend == "chdb":
        return clickhouse_connect.get_client(
            dsn=f"chdb://{target.path}", settings=extra, database=database
        )
    return clickhouse_connect.get_client(
        database=database or "",
        host=target.host,
        port=target.port,
        username=target.username,
        password=target.password,
        secure=target.secure,
        settings=extra,
        autogenerate_session_id=False,
    )


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn clickhouse-connect errors into this package's errors (class decides the retry)."""
    try:
        yield
    except ClickHouseError as error:
        message = _first_line(str(error))
        code = _error_code(str(error))
        if isinstance(error, OperationalError) or code in _TRANSIENT_CODES:
            raise StoreUnavailable(f"ClickHouse unavailable: {message}") from error
        if code == _READONLY:
            raise QueryRefused(f"refused, this SQL entry point is read-only: {message}") from error
        context = " ".join(what.split())[:200]
        raise QueryFailed(f"{message} (in: {context})") from error


def _error_code(message: str) -> int | None:
    found = _CODE.search(message)
    return int(found.group(1)) if found else None


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0][:500] if message.strip() else "unknown error"
