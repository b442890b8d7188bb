"""Why intake refuses an instance or drops a peer.

Every refusal carries the DICOM status the sender gets (PS3.4 Annex B.2.3 for C-STORE; STOW-RS
uses the same codes in its FailureReason, PS3.18 §10.5.3). Retry policy keys off the class::

    IngestError                 base of everything raised by ingest
    ├── Refused                 an instance was not accepted; ``status`` says why
    │   ├── CannotUnderstand    Permanent, 0xC210: unparsable data set, invalid UIDs or values
    │   └── OutOfResources      Transient, 0xA700: blob store full or unavailable, or the broker
    │                           did not acknowledge in time; the sender retries later
    ├── ProtocolViolation       Permanent: the peer broke PS3.8 (bad or unexpected PDU); the
    │                           association is aborted
    └── JournalInUse            Permanent: another receiver process holds the intake journal
"""

from typing import ClassVar

from infra.errors import PermanentError, TalariaError, TransientError

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_UNRECOGNIZED_OPERATION = 0x0211


class IngestError(TalariaError):
    """Base of every error ingest raises."""


class Refused(IngestError):
    """An instance was not accepted; the sender is answered with `status`."""

    status: ClassVar[int]


class CannotUnderstand(Refused, PermanentError):
    """The data set cannot be parsed or lacks valid identifying attributes."""

    status = STATUS_CANNOT_UNDERSTAND


class OutOfResources(Refused, TransientError):
    """The instance could not be made durable and logged now; the sender should retry."""

    status = STATUS_OUT_OF_RESOURCES


class ProtocolViolation(IngestError, PermanentError):
    """The peer sent something PS3.8 does not allow here."""


class JournalInUse(IngestError, PermanentError):
    """Another receiver process holds the intake journal folder."""
