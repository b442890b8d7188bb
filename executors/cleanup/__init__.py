"""Retention: delete the blobs of series that are done, once nobody can need them any more.

`ledger.py` folds the log into what the cleaner must know about each series (completed,
decided, discarded, its jobs and their outcomes) and decides, as a pure function, which series'
blobs may go. `cleaner.py` follows the log, sweeps periodically inside the off-peak window (or
at once when the disk is past its emergency watermark), deletes, and publishes `BlobsPurged`.

Errors::

    CleanupError          base
    └── LogUnreadable     transient: the log could not be read up to its end in time; the
                          cleaner deletes nothing until it has
Blob store errors (`infra.blobstore`) pass through: a transient one ends the sweep, the next
sweep tries again.
"""

from infra.errors import TalariaError, TransientError


class CleanupError(TalariaError):
    """Base of every cleanup failure."""


class LogUnreadable(CleanupError, TransientError):
    """The log could not be read up to its end in time."""
