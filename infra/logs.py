"""Structured logs: every service writes one JSON object per line.

Keys: `event` (what happened), `level`, `timestamp` (UTC, ISO 8601), and the ids the
call site names (`study_uid`, `series_uid`/`series_uids`, `job_id`, `target`, ...), so a log
search for a series or a job finds every line about it.
"""

import logging
import sys

import structlog


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines from structlog for this process (the `talaria` command line calls it)."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # The process's own stdout: Faust replaces sys.stdout with a logger of its own.
        logger_factory=structlog.WriteLoggerFactory(file=sys.__stdout__),
        cache_logger_on_first_use=True,
    )
