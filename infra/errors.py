"""Talaria's error classes shared by all packages.

Retry policy keys off the class, never off message text:
- ``TransientError``: the operation may succeed later (a service down, a timeout, a full disk);
  callers retry with backoff and never drop the input.
- ``PermanentError``: retrying cannot help (bad input, invalid configuration); callers record the
  failure (dead-letter topic, failure queue) and move on.
"""


class TalariaError(Exception):
    """Base of every error Talaria raises on purpose."""


class TransientError(TalariaError):
    """May succeed if retried later."""


class PermanentError(TalariaError):
    """Will fail the same way however often it is retried."""
