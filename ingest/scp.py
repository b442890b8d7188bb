"""The DICOM receiver: an asyncio acceptor of associations serving C-ECHO and C-STORE.

The upper layer (PS3.8) and the two DIMSE services are implemented here directly, on asyncio
(`ingest.pdu.PduConnection` reads and writes the PDUs), instead of through pynetdicom's
threaded state machine: on our 2-core machines a bare pynetdicom SCP that only writes the raw
bytes takes 116 CT / 173 small instances/s, below Orthanc's 152 / 296, and spends 30-42 % of
its CPU in its own polling loops (measured with dicom-bench); this acceptor's protocol work is
about 0.35 ms of CPU per small instance. pynetdicom's SOP class registry still decides which
abstract syntaxes are storage.
Each C-STORE goes through the steps of `Intake.receive` on the event loop (see
`Receiver.receive`); the association waits for them, so the sender gets 0x0000 only once the
instance is durable and its event will reach the log (PS3.4 Annex B.2.3 for the statuses).

Any abstract syntax that is storage, Verification, or unknown to the registry (private SOP
classes) is accepted; transfer syntaxes are taken in the proposer's order of preference,
compressed ones only while `accept_compressed` is on.
"""

import asyncio
import contextlib
import socket
import ssl
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import structlog
from pydicom.uid import UID, UncompressedTransferSyntaxes
from pynetdicom.service_class import ServiceClass, StorageServiceClass, VerificationServiceClass
from pynetdicom.sop_class import uid_to_service_class

from infra.catalogue import (
    AssociationAborted,
    AssociationAccepted,
    AssociationRejected,
    AssociationReleased,
    IntakeFact,
)
from ingest import metrics
from ingest.dimse import (
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_STORE_RQ,
    Command,
    decode_command,
    encode_response,
)
from ingest.errors import (
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    STATUS_UNRECOGNIZED_OPERATION,
    ProtocolViolation,
    Refused,
)
from ingest.intake import Arrival, Intake, Origin
from ingest.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from ingest.pdu import (
    APPLICATION_CONTEXT,
    AbortReason,
    AssociateRequest,
    ContextAnswer,
    ContextResult,
    PduBody,
    PduConnection,
    PduType,
    Pdv,
    ProposedContext,
    decode_associate_rq,
    decode_pdvs,
    encode_abort,
    encode_associate_ac,
    encode_associate_rj,
    encode_p_data,
    encode_release_rp,
)
from ingest.settings import IngestSettings

log = structlog.get_logger(__name__)

_ACCEPTED_SERVICES = (StorageServiceClass, VerificationServiceClass)
_MIN_ASSOCIATION_PDU = 65_536  # room for an A-ASSOCIATE-RQ whatever our max PDU is
_POOLED_BLOB_BYTES = 65_536  # an image of 256x256 or more: see `Receiver.receive`
# The hand-off channel between the acceptor and a worker (`ingest.workers`): a connection
# comes with one of the first two bytes; the worker reports that it is ready to serve, and
# each connection's end.
HANDOFF_PLAIN = b"p"
HANDOFF_TLS = b"t"
HANDOFF_READY = b"r"
HANDOFF_ENDED = b"e"


@dataclass(frozen=True, kw_only=True)
class Rejection:
    """An A-ASSOCIATE-RJ to send (PS3.8 §9.3.4) and why, for the event."""

    result: int  # 1 permanent, 2 transient
    source: int  # 1 service user, 2 ACSE provider, 3 presentation provider
    reason: int
    why: str


def check_association(
    request: AssociateRequest, *, settings: IngestSettings, open_associations: int
) -> Rejection | None:
    """Whether to refuse an association outright, and how (PS3.8 §9.3.4)."""
    if not request.protocol_version & 0x0001:
        why = f"protocol version {request.protocol_version} not supported"
        return Rejection(result=1, source=2, reason=2, why=why)
    if request.application_context != APPLICATION_CONTEXT:
        why = f"application context {request.application_context}"
        return Rejection(result=1, source=1, reason=2, why=why)
    if settings.check_called_aet and request.called_aet != settings.ae_title:
        why = f"called AE title {request.called_aet!r} is not ours"
        return Rejection(result=1, source=1, reason=7, why=why)
    allowed = settings.allowed_calling_aets
    if allowed and request.calling_aet not in allowed:
        why = f"calling AE title {request.calling_aet!r} not allowed"
        return Rejection(result=1, source=1, reason=3, why=why)
    if open_associations >= settings.max_associations:
        why = f"{open_associations} associations open, the limit"
        return Rejection(result=2, source=3, reason=2, why=why)
    return None


def negotiate(request: AssociateRequest, *, accept_compressed: bool) -> list[ContextAnswer]:
    """One answer per proposed presentation context (PS3.8 §9.3.3.2)."""
    return [_answer(context, accept_compressed=accept_compressed) for context in request.contexts]


def _answer(context: ProposedContext, *, accept_compressed: bool) -> ContextAnswer:
    context_id, syntaxes = context.id, context.transfer_syntaxes
    service = uid_to_service_class(context.abstract_syntax)
    if service is not ServiceClass and not issubclass(service, _ACCEPTED_SERVICES):
        return ContextAnswer(
            id=context_id,
            result=ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED,
            transfer_syntax=syntaxes[0] if syntaxes else "",
        )
    for syntax in syntaxes:
        if _acceptable_syntax(syntax, accept_compressed=accept_compressed):
            return ContextAnswer(
                id=context_id, result=ContextResult.ACCEPTANCE, transfer_syntax=syntax
            )
    return ContextAnswer(
        id=context_id,
        result=ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED,
        transfer_syntax=syntaxes[0] if syntaxes else "",
    )


def _acceptable_syntax(syntax: str, *, accept_compressed: bool) -> bool:
    if syntax in UncompressedTransferSyntaxes:
        return True
    return accept_compressed and UID(syntax).is_transfer_syntax


@dataclass
class _Message:
    """A DIMSE message being assembled from PDV fragments (PS3.7 §9.2, PS3.8 Annex E)."""

    context_id: int
    command_parts: list[memoryview] = field(default_factory=list)
    data_parts: list[memoryview] = field(default_factory=list)
    command: Command | None = None
    complete: bool = False

    def add(self, pdv: Pdv) -> None:
        if pdv.context_id != self.context_id:
            raise ProtocolViolation("PDVs of one message use different presentation contexts")
        if pdv.is_command:
            if self.command is not None:
                raise ProtocolViolation("command fragment after the command set was complete")
            self.command_parts.append(pdv.data)
            if pdv.is_last:
                self.command = decode_command(b"".join(self.command_parts))
                self.complete = not self.command.has_data_set
        else:
            if self.command is None:
                raise ProtocolViolation("data set fragment before the command set")
            self.data_parts.append(pdv.data)
            self.complete = pdv.is_last


class Association:
    """One peer's association, from A-ASSOCIATE-RQ to release or abort."""

    def __init__(self, receiver: "Receiver", connection: PduConnection) -> None:
        self._receiver = receiver
        self._settings = receiver.settings
        self._connection = connection
        peer = connection.peer()
        self._origin = Origin(intake="dicom", peer_address=peer[0], peer_port=peer[1])
        self._id = uuid.uuid4().hex
        self._request: AssociateRequest | None = None
        self._syntaxes: dict[int, str] = {}
        self._instances = 0
        self._log = log.bind(association=self._id, peer=f"{peer[0]}:{peer[1]}")

    async def run(self) -> None:
        """Serve the association until it ends; never raises."""
        try:
            if await self._associate():
                await self._serve()
        except ProtocolViolation as error:
            self._abort(f"protocol violation: {error}", AbortReason.UNEXPECTED_PDU)
        except TimeoutError:
            self._abort("timed out", AbortReason.NOT_SPECIFIED)
        except OSError as error:  # ConnectionError and ssl.SSLError among them
            self._ended_by_peer(f"connection lost: {error!r}")
        except Exception:
            self._log.exception("association failed")
            self._abort("internal error", AbortReason.NOT_SPECIFIED)
        finally:
            self._connection.close()

    async def _associate(self) -> bool:
        async with asyncio.timeout(self._settings.acse_timeout_s):
            pdu_type, body = await self._connection.read_pdu(
                max_length=max(self._settings.max_pdu, _MIN_ASSOCIATION_PDU)
            )
        if pdu_type != PduType.ASSOCIATE_RQ:
            raise ProtocolViolation(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}")
        request = decode_associate_rq(body)
        self._origin = Origin(
            intake="dicom",
            calling_aet=request.calling_aet,
            called_aet=request.called_aet,
            peer_address=self._origin.peer_address,
            peer_port=self._origin.peer_port,
        )
        rejection = check_association(
            request, settings=self._settings, open_associations=self._receiver.open_associations
        )
        if rejection is not None:
            await self._reject(rejection)
            return False
        await self._accept(request)
        return True

    async def _reject(self, rejection: Rejection) -> None:
        self._connection.write(
            encode_associate_rj(
                result=rejection.result, source=rejection.source, reason=rejection.reason
            )
        )
        await self._connection.drain()
        metrics.ASSOCIATIONS.labels("rejected").inc()
        self._log.info("association rejected", reason=rejection.why)
        self._report(AssociationRejected, reason=rejection.why)

    async def _accept(self, request: AssociateRequest) -> None:
        answers = negotiate(request, accept_compressed=self._settings.accept_compressed)
        self._syntaxes = {
            answer.id: answer.transfer_syntax
            for answer in answers
            if answer.result == ContextResult.ACCEPTANCE
        }
        self._connection.write(
            encode_associate_ac(
                request,
                answers,
                max_pdu=self._settings.max_pdu,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            )
        )
        await self._connection.drain()
        self._request = request
        self._receiver.opened()
        metrics.ASSOCIATIONS.labels("accepted").inc()
        self._log = self._log.bind(calling_aet=request.calling_aet)
        self._log.info("association accepted", contexts=len(self._syntaxes))
        self._report(AssociationAccepted, association_id=self._id)

    async def _serve(self) -> None:
        message: _Message | None = None
        while True:
            timeout = self._settings.network_timeout_s
            if message is not None:
                timeout = self._settings.dimse_timeout_s
            async with asyncio.timeout(timeout):
                pdu_type, body = await self._connection.read_pdu(max_length=self._settings.max_pdu)
            if pdu_type == PduType.P_DATA_TF:
                message = await self._take_pdvs(message, body)
            elif pdu_type == PduType.RELEASE_RQ:
                await self._release()
                return
            elif pdu_type == PduType.ABORT:
                self._ended_by_peer("aborted by the peer")
                return
            else:
                raise ProtocolViolation(f"unexpected PDU type 0x{pdu_type:02X}")

    async def _take_pdvs(self, message: _Message | None, body: PduBody) -> _Message | None:
        for pdv in decode_pdvs(body):
            if pdv.context_id not in self._syntaxes:
                raise ProtocolViolation(f"presentation context {pdv.context_id} not accepted")
            message = message or _Message(context_id=pdv.context_id)
            message.add(pdv)
            if message.complete:
                await self._answer(message)
                message = None
        return message

    async def _answer(self, message: _Message) -> None:
        command = message.command
        assert command is not None  # a complete message has its command
        if command.field == C_CANCEL_RQ:
            return  # nothing to cancel: we answer each request before reading the next
        if command.field == C_ECHO_RQ:
            status, comment = STATUS_SUCCESS, ""
        elif command.field == C_STORE_RQ and command.has_data_set:
            status, comment = await self._store(message, command)
        else:
            status, comment = STATUS_UNRECOGNIZED_OPERATION, "only C-STORE and C-ECHO"
        response = encode_response(command, status=status, comment=comment)
        self._connection.write(
            encode_p_data(
                context_id=message.context_id,
                command=True,
                data=response,
                max_pdu=self._request.max_pdu if self._request else 0,
            )
        )
        await self._connection.drain()

    async def _store(self, message: _Message, command: Command) -> tuple[int, str]:
        request = self._request
        assert request is not None  # messages flow only on an accepted association
        arrival = Arrival.from_data_set(
            message.data_parts,
            sop_class_uid=command.sop_class_uid,
            sop_instance_uid=command.sop_instance_uid,
            transfer_syntax_uid=self._syntaxes[message.context_id],
            implementation_class_uid=request.implementation_class_uid or IMPLEMENTATION_CLASS_UID,
            implementation_version_name=request.implementation_version_name,
        )
        try:
            await self._receiver.receive(arrival, self._origin)
        except Refused as refusal:
            return refusal.status, str(refusal)
        except Exception:
            self._log.exception("C-STORE failed", sop_uid=command.sop_instance_uid)
            return STATUS_OUT_OF_RESOURCES, "internal error"
        self._instances += 1
        return STATUS_SUCCESS, ""

    async def _release(self) -> None:
        self._connection.write(encode_release_rp())
        await self._connection.drain()
        self._closed("released", AssociationReleased)

    def _abort(self, why: str, reason: AbortReason) -> None:
        self._log.warning("association aborted", why=why)
        if not self._connection.is_closing():
            self._connection.write(encode_abort(reason))
        self._ended_by_peer(why)

    def _ended_by_peer(self, why: str) -> None:
        if self._request is None:
            self._report(AssociationRejected, reason=why)
            return
        self._log.info("association ended", why=why)
        self._closed("aborted", AssociationAborted)

    def _closed(
        self, outcome: str, fact: type[AssociationReleased] | type[AssociationAborted]
    ) -> None:
        self._receiver.closed()
        self._request = None
        metrics.ASSOCIATIONS.labels(outcome).inc()
        self._report(fact, association_id=self._id, instances=self._instances)

    def _report(self, fact: type[IntakeFact], **fields: object) -> None:
        payload = fact(
            calling_aet=self._origin.calling_aet,
            called_aet=self._origin.called_aet,
            peer_address=self._origin.peer_address,
            peer_port=self._origin.peer_port,
            **fields,
        )
        self._receiver.intake.report(payload)


class Receiver:
    """Listens on the DICOM port (and the TLS port, if configured) and serves associations."""

    def __init__(self, settings: IngestSettings, intake: Intake) -> None:
        self.settings = settings
        self.intake = intake
        self.open_associations = 0
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._pool = ThreadPoolExecutor(
            max_workers=settings.max_associations, thread_name_prefix="intake"
        )
        self._handoffs: socket.socket | None = None
        self._tls = tls_context(settings) if settings.tls_port is not None else None

    async def start(self, handoffs: socket.socket | None = None) -> None:
        """Bind the ports and return once connections are accepted; or, as one of several
        worker processes, serve the connections the acceptor hands over on `handoffs` (see
        `ingest.workers`) and report each one's end there."""
        if handoffs is not None:
            self._handoffs = handoffs
            handoffs.setblocking(False)
            asyncio.get_running_loop().add_reader(handoffs.fileno(), self._take_handoffs)
            handoffs.send(HANDOFF_READY)
            return
        loop = asyncio.get_running_loop()
        self._servers.append(
            await loop.create_server(
                self._new_connection, self.settings.dicom_bind, self.settings.dicom_port
            )
        )
        if self.settings.tls_port is not None:
            self._servers.append(
                await loop.create_server(
                    self._new_connection,
                    self.settings.dicom_bind,
                    self.settings.tls_port,
                    ssl=self._tls,
                    ssl_handshake_timeout=self.settings.acse_timeout_s,
                )
            )
        log.info("DICOM receiver listening", ae_title=self.settings.ae_title, ports=self.ports)

    def _new_connection(self, *, on_made: bool = True) -> PduConnection:
        """A connection that takes PDUs up to our largest; unless `on_made` is false, its
        association starts once it is made (after the TLS handshake, if any)."""
        return PduConnection(
            max_length=max(self.settings.max_pdu, _MIN_ASSOCIATION_PDU),
            on_made=self._associate if on_made else None,
        )

    @property
    def ports(self) -> list[int]:
        """The bound ports, plain first (useful when configured as 0)."""
        return [server.sockets[0].getsockname()[1] for server in self._servers]

    async def stop(self) -> None:
        """Stop listening, end open associations, and wait for stores in progress."""
        if self._handoffs is not None:
            asyncio.get_running_loop().remove_reader(self._handoffs.fileno())
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._pool.shutdown(wait=True)

    async def receive(self, arrival: Arrival, origin: Origin) -> None:
        """`Intake.receive`, its steps placed so that a thread switch lies on an instance's
        path only where it pays: the blob's bytes are written and the event is published from
        the loop, and the acknowledgement wakes the loop directly. The blob is made durable on
        the loop itself, unless another association is open and the blob is large: then on
        the thread pool, so that the loop reads the other senders' data during the long
        flush. For small instances the switch cost more CPU than the wait (10 kB instances
        from 4 senders to 2 workers: 280 inst/s with the pool, 389 on the loop); for 526 kB
        CT images the overlap won while their bytes went through the page cache (293 on the
        loop, 341 with the pool; medians of 4 interleaved runs). Written past it (O_DIRECT,
        see `infra.blobstore`), they leave a short flush, and the pool no longer changed the
        rate (4 senders to 4 workers: 689 inst/s, 683 on the loop); it stays for disks slower
        to flush."""
        acceptance = self.intake.begin(arrival, origin)
        settled = _on_loop(acceptance.settled)
        if self.open_associations > 1 and len(arrival.file) >= _POOLED_BLOB_BYTES:
            await asyncio.get_running_loop().run_in_executor(self._pool, acceptance.store)
        else:
            acceptance.store()
        await settled
        acceptance.finish()

    def opened(self) -> None:
        self.open_associations += 1
        metrics.OPEN_ASSOCIATIONS.inc()

    def closed(self) -> None:
        self.open_associations -= 1
        metrics.OPEN_ASSOCIATIONS.dec()

    def _associate(self, connection: PduConnection) -> None:
        task = asyncio.get_running_loop().create_task(Association(self, connection).run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _take_handoffs(self) -> None:
        assert self._handoffs is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                kind, fds, _flags, _address = socket.recv_fds(self._handoffs, 1, 1)
            except BlockingIOError:
                return
            if not fds:  # the acceptor is gone; the parent-death signal stops this process
                loop.remove_reader(self._handoffs.fileno())
                return
            connection = socket.socket(fileno=fds[0])
            task = loop.create_task(self._serve_handed_over(connection, tls=kind == HANDOFF_TLS))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve_handed_over(self, connection: socket.socket, *, tls: bool) -> None:
        """Serve a connection the acceptor accepted, as `asyncio.start_server` would have."""
        assert self._handoffs is not None
        loop = asyncio.get_running_loop()
        try:
            peer = self._new_connection(on_made=False)
            await loop.connect_accepted_socket(
                lambda: peer,
                connection,
                ssl=self._tls if tls else None,
                ssl_handshake_timeout=self.settings.acse_timeout_s if tls else None,
            )
            await Association(self, peer).run()
        except OSError as error:  # SSL errors and handshake time-outs included
            connection.close()
            log.info("connection lost before its association", error=repr(error))
        finally:
            with contextlib.suppress(OSError):  # else the acceptor is gone: nobody counts
                self._handoffs.send(HANDOFF_ENDED)


def _on_loop(future: "Future[None]") -> "asyncio.Future[None]":
    """An asyncio future resolved (never with an error: the caller reads `future` itself) once
    `future` is done, woken from whichever thread completes it."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def resolve() -> None:
        if not done.done():
            done.set_result(None)

    future.add_done_callback(lambda _: loop.call_soon_threadsafe(resolve))
    return done


def tls_context(settings: IngestSettings) -> ssl.SSLContext:
    """Server side of DICOM TLS (PS3.15 Annex B.9): our certificate; client ones if a CA is set."""
    assert settings.tls_cert is not None  # IngestSettings checks both come with tls_port
    assert settings.tls_key is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_ca is not None:
        context.load_verify_locations(settings.tls_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
