"""DICOM Part 10 files: the file meta information around a data set (PS3.10 §7.1).

A C-STORE carries only the data set; we put the 128-byte preamble, ``DICM`` and a file meta group
in front of the bytes exactly as received, so the blob is a standard file and the pixel data is
never decoded. Files that arrive whole (STOW-RS, upload, import) are split, not rewritten.
"""

import struct
from dataclasses import dataclass

from ingest.errors import CannotUnderstand

IMPLEMENTATION_CLASS_UID = "2.25.208902616803579529686342149004324645503"
IMPLEMENTATION_VERSION_NAME = "TALARIA_01"

PREAMBLE = bytes(128) + b"DICM"
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"})


@dataclass(frozen=True, kw_only=True)
class FileMeta:
    """What the file meta group says about a data set, and where the data set begins."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset_offset: int


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if vr in _LONG_VRS:
        return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii", "replace")  # a bad UID is caught by intake, not here
    return raw + pad if len(raw) % 2 else raw


def encode_file_meta(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes:
    """Preamble, ``DICM`` and the meta group (explicit VR little endian, PS3.10 §7.1).

    The sender's implementation class UID and version name are kept, so a file sent by a DCMTK
    tool comes back byte for byte as the file it sent.
    """
    body = b"".join(
        [
            _element(0x00020001, b"OB", b"\x00\x01"),
            _element(0x00020002, b"UI", _padded(sop_class_uid, b"\0")),
            _element(0x00020003, b"UI", _padded(sop_instance_uid, b"\0")),
            _element(0x00020010, b"UI", _padded(transfer_syntax_uid, b"\0")),
            _element(0x00020012, b"UI", _padded(implementation_class_uid, b"\0")),
        ]
    )
    if implementation_version_name:
        body += _element(0x00020013, b"SH", _padded(implementation_version_name, b" "))
    length = _element(0x00020000, b"UL", struct.pack("<I", len(body)))
    return PREAMBLE + length + body


def read_file_meta(data: bytes) -> FileMeta:
    """Split a Part 10 file; `CannotUnderstand` if it is not one."""
    if len(data) < len(PREAMBLE) or data[128:132] != b"DICM":
        raise CannotUnderstand("not a DICOM Part 10 file (no 'DICM' after the preamble)")
    values: dict[int, bytes] = {}
    position = len(PREAMBLE)
    while position + 8 <= len(data):
        group, element, vr = struct.unpack_from("<HH2s", data, position)
        if group != 0x0002:
            break
        if vr in _LONG_VRS:
            if position + 12 > len(data):
                break
            (length,) = struct.unpack_from("<I", data, position + 8)
            start = position + 12
        else:
            (length,) = struct.unpack_from("<H", data, position + 6)
            start = position + 8
        if start + length > len(data):
            raise CannotUnderstand("the file meta group runs past the end of the file")
        values[element] = data[start : start + length]
        position = start + length
    return FileMeta(
        sop_class_uid=_uid_text(values, 0x0002),
        sop_instance_uid=_uid_text(values, 0x0003),
        transfer_syntax_uid=_uid_text(values, 0x0010),
        dataset_offset=position,
    )


def _uid_text(values: dict[int, bytes], element: int) -> str:
    raw = values.get(element)
    if raw is None:
        raise CannotUnderstand(f"the file meta group lacks (0002,{element:04X})")
    try:
        return raw.decode("ascii").rstrip("\0 ")
    except UnicodeDecodeError:
        raise CannotUnderstand(f"(0002,{element:04X}) is not ASCII") from None
