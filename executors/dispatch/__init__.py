"""Dispatch: deliver a series or study to one target, truthfully and with retries.

Errors (retry policy keys off the class)::

    DispatchError                  base
    ├── TargetUnavailable          transient: connection refused, timeout, HTTP 5xx, DICOM 0xA7xx
    └── TargetRefused              permanent: association rejected for good, HTTP 4xx, a status
        │                          the target will answer again
        └── TargetMisconfigured    permanent: unknown target or invalid settings
"""

from infra.errors import PermanentError, TalariaError, TransientError


class DispatchError(TalariaError):
    """Base of every dispatch failure."""


class TargetUnavailable(DispatchError, TransientError):
    """The target could not take the data now; a later attempt may succeed."""


class TargetRefused(DispatchError, PermanentError):
    """The target refused the data in a way a retry will not change."""


class TargetMisconfigured(TargetRefused):
    """The target's configuration is missing or invalid."""
