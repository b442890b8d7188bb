"""DIMSE command sets of C-STORE and C-ECHO (PS3.7 §9.3), as acceptor and as requestor.

A command set is group 0000 in implicit VR little endian (PS3.7 §6.3.1). We read only the
elements we act on and write requests and responses by hand: this is the per-instance hot path.
"""

import struct
from dataclasses import dataclass
from typing import Final

from ingest.errors import ProtocolViolation

C_STORE_RQ: Final = 0x0001
C_ECHO_RQ: Final = 0x0030
C_CANCEL_RQ: Final = 0x0FFF
RESPONSE_BIT: Final = 0x8000
NO_DATA_SET: Final = 0x0101  # Command Data Set Type: no data set follows (PS3.7 §E.2)

_AFFECTED_SOP_CLASS: Final = 0x00000002
_COMMAND_FIELD: Final = 0x00000100
_MESSAGE_ID: Final = 0x00000110
_DATA_SET_TYPE: Final = 0x00000800
_AFFECTED_SOP_INSTANCE: Final = 0x00001000
_MESSAGE_ID_RESPONDED_TO: Final = 0x00000120
_STATUS: Final = 0x00000900
_ERROR_COMMENT: Final = 0x00000902
VERIFICATION: Final = "1.2.840.10008.1.1"


@dataclass(frozen=True, kw_only=True)
class Command:
    """A request's command set, reduced to what an acceptor needs."""

    field: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    has_data_set: bool


@dataclass(frozen=True, kw_only=True)
class Response:
    """A response's command set, reduced to what a requestor needs."""

    field: int
    message_id: int  # the request's message ID, (0000,0120)
    status: int
    comment: str


def decode_command(data: bytes) -> Command:
    """Parse a request command set; `ProtocolViolation` if it is malformed."""
    values = _elements(data)
    try:
        field = _number(values, _COMMAND_FIELD)
        message_id = _number(values, _MESSAGE_ID)
    except KeyError as missing:
        raise ProtocolViolation(f"command set lacks element {missing}") from None
    return Command(
        field=field,
        message_id=message_id,
        sop_class_uid=_uid(values.get(_AFFECTED_SOP_CLASS, b"")),
        sop_instance_uid=_uid(values.get(_AFFECTED_SOP_INSTANCE, b"")),
        has_data_set=values.get(_DATA_SET_TYPE, b"\x01\x01") != b"\x01\x01",
    )


def decode_response(data: bytes) -> Response:
    """Parse a response command set; `ProtocolViolation` if it is malformed."""
    values = _elements(data)
    try:
        return Response(
            field=_number(values, _COMMAND_FIELD),
            message_id=_number(values, _MESSAGE_ID_RESPONDED_TO),
            status=_number(values, _STATUS),
            comment=values.get(_ERROR_COMMENT, b"").decode("ascii", "replace").strip(" \0"),
        )
    except KeyError as missing:
        raise ProtocolViolation(f"response lacks element {missing}") from None


def _elements(data: bytes) -> dict[int, bytes]:
    """Element number to value of a command set (group 0000)."""
    values: dict[int, bytes] = {}
    position = 0
    while position < len(data):
        if position + 8 > len(data):
            raise ProtocolViolation("command set ends inside an element header")
        group, element, length = struct.unpack_from("<HHI", data, position)
        end = position + 8 + length
        if group != 0x0000 or end > len(data):
            raise ProtocolViolation(f"malformed command element ({group:04X},{element:04X})")
        values[element] = data[position + 8 : end]
        position = end
    return values


def _number(values: dict[int, bytes], element: int) -> int:
    raw = values[element]
    if len(raw) != 2:
        raise ProtocolViolation(f"(0000,{element:04X}) is not a US value")
    number: int = struct.unpack("<H", raw)[0]
    return number


def _uid(raw: bytes) -> str:
    return raw.decode("ascii", "replace").rstrip("\0 ")


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _even(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + pad if len(raw) % 2 else raw


def encode_store_rq(*, message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """A C-STORE-RQ command set (PS3.7 §9.3.1.1), medium priority, a data set follows."""
    return _command_set(
        _element(_AFFECTED_SOP_CLASS, _even(sop_class_uid, b"\0"))
        + _element(_COMMAND_FIELD, struct.pack("<H", C_STORE_RQ))
        + _element(_MESSAGE_ID, struct.pack("<H", message_id))
        + _element(0x0700, struct.pack("<H", 0x0000))  # priority: medium
        + _element(_DATA_SET_TYPE, struct.pack("<H", 0x0000))
        + _element(_AFFECTED_SOP_INSTANCE, _even(sop_instance_uid, b"\0"))
    )


def encode_echo_rq(*, message_id: int) -> bytes:
    """A C-ECHO-RQ command set (PS3.7 §9.3.5.1)."""
    return _command_set(
        _element(_AFFECTED_SOP_CLASS, _even(VERIFICATION, b"\0"))
        + _element(_COMMAND_FIELD, struct.pack("<H", C_ECHO_RQ))
        + _element(_MESSAGE_ID, struct.pack("<H", message_id))
        + _element(_DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET))
    )


def _command_set(body: bytes) -> bytes:
    """`body` behind its group length (0000,0000)."""
    return _element(0x0000, struct.pack("<I", len(body))) + body


def encode_response(request: Command, *, status: int, comment: str = "") -> bytes:
    """The response command set to `request` with `status` (PS3.7 §9.3.1.2, §9.3.5.2).

    A failure may carry an Error Comment (0000,0902), at most 64 characters of LO text.
    """
    body = _element(_AFFECTED_SOP_CLASS, _even(request.sop_class_uid, b"\0"))
    body += _element(_COMMAND_FIELD, struct.pack("<H", request.field | RESPONSE_BIT))
    body += _element(_MESSAGE_ID_RESPONDED_TO, struct.pack("<H", request.message_id))
    body += _element(_DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET))
    body += _element(_STATUS, struct.pack("<H", status))
    if comment:
        text = comment.replace("\\", "/")[:64]
        body += _element(_ERROR_COMMENT, _even(text, b" "))
    if request.sop_instance_uid:
        body += _element(_AFFECTED_SOP_INSTANCE, _even(request.sop_instance_uid, b"\0"))
    return _command_set(body)
