"""DIMSE command sets for the services we provide: C-STORE and C-ECHO (PS3.7 §9.3).

A command set is group 0000 in implicit VR little endian (PS3.7 §6.3.1). We read only the
elements we act on and write responses by hand: this is the per-instance hot path.
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


@dataclass(frozen=True, kw_only=True)
class Command:
    """A request's command set, reduced to what an acceptor needs."""

    field: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    has_data_set: bool


def decode_command(data: bytes) -> Command:
    """Parse a request command set; `ProtocolViolation` if it is malformed."""
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


def encode_response(request: Command, *, status: int, comment: str = "") -> bytes:
    """The response command set to `request` with `status` (PS3.7 §9.3.1.2, §9.3.5.2).

    A failure may carry an Error Comment (0000,0902), at most 64 characters of LO text.
    """
    body = _element(_AFFECTED_SOP_CLASS, _even(request.sop_class_uid, b"\0"))
    body += _element(_COMMAND_FIELD, struct.pack("<H", request.field | RESPONSE_BIT))
    body += _element(0x0120, struct.pack("<H", request.message_id))  # being responded to
    body += _element(_DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET))
    body += _element(0x0900, struct.pack("<H", status))
    if comment:
        text = comment.replace("\\", "/")[:64]
        body += _element(0x0902, _even(text, b" "))
    if request.sop_instance_uid:
        body += _element(_AFFECTED_SOP_INSTANCE, _even(request.sop_instance_uid, b"\0"))
    return _element(0x0000, struct.pack("<I", len(body))) + body
