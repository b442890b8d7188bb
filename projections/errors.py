"""The errors of the projections package.

- `ProjectionError` (base, a `TalariaError`)
  - `StoreUnavailable` (transient): ClickHouse did not answer or refused a write for now
    (server down, timeout); the projector retries the batch, offsets stay where they were.
  - `StoreBusy` (permanent): the embedded chDB folder is held by another process (one process
    per folder); stop the UI/projector that holds it, or point both at a ClickHouse server.
  - `LagUnknown` (transient): the broker did not say where the log ends or what the projector
    committed (a leader election, say); ask again later.
  - `QueryRefused` (permanent): a read-only analytics query tried to write, change settings or
    reach outside the database.
  - `QueryFailed` (permanent): a query is invalid (syntax, unknown column, bad filter).
  - `GenerationChanged` (permanent for the batch in hand): a rebuild swapped the tables in
    under a running projector; it gives the batch up and restarts on the new generation's
    consumer group.
"""

from infra.errors import PermanentError, TalariaError, TransientError


class ProjectionError(TalariaError):
    """Base of every error raised by the projections package."""


class StoreUnavailable(ProjectionError, TransientError):
    """ClickHouse is unreachable or overloaded for now."""


class StoreBusy(ProjectionError, PermanentError):
    """Another process holds the embedded chDB folder."""


class QueryRefused(ProjectionError, PermanentError):
    """A read-only query tried to do more than read."""


class QueryFailed(ProjectionError, PermanentError):
    """A query is invalid."""


class GenerationChanged(ProjectionError, PermanentError):
    """The projection tables were rebuilt and swapped in under a running projector."""


class LagUnknown(ProjectionError, TransientError):
    """The broker did not report end or committed offsets this time."""
