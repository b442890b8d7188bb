"""Associations with a DICOM source, for C-FIND, C-GET and C-MOVE (pynetdicom).

Dispatch has its own lean storage SCU; query and retrieve need pynetdicom's query/retrieve
service classes, with SCP/SCU role selection and a C-STORE handler for C-GET.
"""

import contextlib
import socket
from typing import Any, cast

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket

from executors.dispatch import TargetRefused, TargetUnavailable
from executors.dispatch.scu import Peer
from executors.dispatch.targets.dicom import DicomTarget


def associate(
    target: DicomTarget,
    peer: Peer,
    *,
    timeout_s: float,
    contexts: list[PresentationContext],
    roles: list[SCP_SCU_RoleSelectionNegotiation] | None = None,
    handlers: list[EventHandlerType] | None = None,
) -> "Open":
    """An association for a `with` block: released at its end, aborted on an error.
    `roles` and `handlers` serve C-GET, where the peer sends us C-STOREs."""
    ae = AE(ae_title=peer.calling)
    ae.requested_contexts = contexts
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    tls = target.tls()
    association = ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.called,
        tls_args=(tls, peer.host) if tls is not None else None,
        ext_neg=cast("list[Any] | None", roles),
        evt_handlers=handlers,
    )
    return Open(association, peer)


class Open:
    """An established association, released on exit (aborted if an error escapes)."""

    def __init__(self, association: Association, peer: Peer) -> None:
        self._association = association
        self._peer = peer

    def __enter__(self) -> Association:
        association = self._association
        if association.is_rejected:
            result = association.acceptor.primitive.result if association.acceptor.primitive else 0
            if result == 0x01:  # rejected-permanent (PS3.8 §7.1.1.7)
                raise TargetRefused(f"{self._peer} rejected the association permanently")
            raise TargetUnavailable(f"{self._peer} rejected the association for now")
        if not association.is_established:
            raise TargetUnavailable(f"{self._peer} could not be reached")
        return association

    def __exit__(self, error_type: type[BaseException] | None, *_rest: object) -> None:
        if not self._association.is_established:
            return
        if error_type is None:
            self._association.release()
        else:
            self._association.abort()


def _shutdown_and_close(transport: AssociationSocket) -> None:
    """pynetdicom 3.0 skips close() when shutdown() fails, as it does on a refused connection,
    and leaks the socket; always close."""
    if transport.socket is not None:
        with contextlib.suppress(OSError):
            transport.socket.shutdown(socket.SHUT_RDWR)
        transport.socket.close()


AssociationSocket._shutdown_socket = _shutdown_and_close  # type: ignore[method-assign, assignment]
