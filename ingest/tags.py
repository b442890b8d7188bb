"""The tag snapshot: the attributes routing rules read, taken from a data set's header.

The set matches mercure's, so existing rules (`@Tag@`, `tags.X`) work unchanged. Values are text
decoded with the data set's Specific Character Set; multiple values are joined with a backslash;
an absent attribute is present with the value ``""``.

The header is walked element by element (PS3.5 §7) only up to the highest tag needed: pixel
data is never read. The walk is our own because pydicom's per-element conversion costs about
1.6 ms per instance, more than the rest of a C-STORE; pydicom still supplies the data dictionary
and the character set decoding of ISO 2022 code extensions.
"""

import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from pydicom.charset import decode_bytes, python_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

from infra.blobstore import InvalidUID, validate_uid
from ingest.errors import CannotUnderstand

ROUTING_TAGS: Final = (
    "SpecificCharacterSet",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "Modality",
    "BodyPartExamined",
    "ProtocolName",
    "RetrieveAETitle",
    "StationAETitle",
    "Manufacturer",
    "ManufacturerModelName",
    "StudyDescription",
    "CodeValue",
    "CodeMeaning",
    "SeriesDescription",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "SeriesNumber",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "SequenceName",
    "ScanningSequence",
    "SequenceVariant",
    "MagneticFieldStrength",
    "StationName",
    "DeviceSerialNumber",
    "DeviceUID",
    "SoftwareVersions",
    "ContrastBolusAgent",
    "ImageComments",
    "SliceThickness",
    "InstanceNumber",
    "AcquisitionNumber",
    "InstitutionName",
    "AcquisitionType",
    "ImageType",
)
# Attributes that occur inside code sequences: the first occurrence, depth first, counts.
NESTED_TAGS: Final = frozenset({"CodeValue", "CodeMeaning"})
MAX_VALUE_CHARS: Final = 10_240  # the longest text VR (LT, PS3.5 Table 6.2-1)
MAX_INFLATED_BYTES: Final = 64 * 1024**2
MAX_DEPTH: Final = 12

_SPECIFIC_CHARACTER_SET: Final = 0x00080005
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED: Final = 0xFFFFFFFF
_LONG_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
_UNSPLIT_VRS: Final = frozenset({"LT", "ST", "UT", "UR"})  # backslash is text, not a delimiter
_NUMBER_FORMATS: Final = {
    "US": "H",
    "SS": "h",
    "UL": "I",
    "SL": "i",
    "FL": "f",
    "FD": "d",
    "UV": "Q",
    "SV": "q",
}
_BYTE_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_VRS: Final = {  # a VR is two upper-case letters; the dictionary spares decoding each one
    bytes((first, second)): chr(first) + chr(second)
    for first in range(ord("A"), ord("Z") + 1)
    for second in range(ord("A"), ord("Z") + 1)
}
_TAG_TEXT = re.compile(r"\(?([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)?")

Element = tuple[str, "bytes | list[Elements]"]  # VR and raw value, or a sequence's items
Elements = dict[int, Element]


@dataclass(frozen=True)
class Header:
    """The elements read from a data set, and how to turn their values into text."""

    elements: Elements
    byte_order: str  # struct prefix: "<" or ">"
    encodings: list[str]


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """The validated identity of an instance and its routing tags."""

    study_uid: str
    series_uid: str
    sop_uid: str
    tags: dict[str, str]


@dataclass(frozen=True)
class TagSpec:
    """One attribute of the snapshot: the name rules use and the tag it is read from."""

    name: str
    tag: int


def resolve_tag(text: str) -> TagSpec:
    """A tag by keyword (``PatientAge``) or number (``(0010,1010)``); ValueError if neither."""
    text = text.strip()
    match = _TAG_TEXT.fullmatch(text)
    if match:
        tag = int(match[1], 16) << 16 | int(match[2], 16)
        return TagSpec(keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})", tag)
    number = tag_for_keyword(text)
    if number is None:
        raise ValueError(f"{text!r} is neither a DICOM keyword nor a (gggg,eeee) tag")
    return TagSpec(text, number)


class TagReader:
    """Reads snapshots for the routing tags plus the configured extra ones."""

    def __init__(self, extra_tags: Sequence[str] = ()) -> None:
        names = dict.fromkeys([*ROUTING_TAGS, *extra_tags])
        self._specs = tuple(resolve_tag(name) for name in names)
        self._last_tag = max(spec.tag for spec in self._specs)
        self._nested = frozenset(spec.tag for spec in self._specs if spec.name in NESTED_TAGS)

    def read(
        self, dataset: bytes | memoryview, *, transfer_syntax_uid: str, media_sop_class_uid: str
    ) -> Snapshot:
        """Parse the header of `dataset` (encoded in `transfer_syntax_uid`) into a snapshot."""
        header = read_header(dataset, transfer_syntax_uid=transfer_syntax_uid, last=self._last_tag)
        # Most specs are absent from a given data set: those cost a lookup, not a call.
        looked_up = header.elements.keys() | self._nested
        tags = {
            spec.name: self._value(header, spec) if spec.tag in looked_up else ""
            for spec in self._specs
        }
        tags["MediaStorageSOPClassUID"] = media_sop_class_uid
        return Snapshot(
            study_uid=_uid(tags, "StudyInstanceUID"),
            series_uid=_uid(tags, "SeriesInstanceUID"),
            sop_uid=_uid(tags, "SOPInstanceUID"),
            tags=tags,
        )

    def _value(self, header: Header, spec: TagSpec) -> str:
        value = _text_of(header, header.elements, spec.tag)
        if not value and spec.tag in self._nested:
            value = next(_nested_values(header, header.elements, spec.tag), "")
        if len(value) > MAX_VALUE_CHARS:
            raise CannotUnderstand(f"{spec.name} is {len(value)} characters long")
        return value


def read_header(dataset: bytes | memoryview, *, transfer_syntax_uid: str, last: int) -> Header:
    """Top-level elements of `dataset` up to tag `last`, with their sequences' items."""
    deflated, implicit, byte_order = _encoding_of(transfer_syntax_uid)
    if deflated:
        dataset = _inflate(dataset)
    walker = _Walker(dataset, implicit=implicit, byte_order=byte_order)
    elements, _ = walker.elements(0, len(dataset), last=last, depth=0)
    return Header(elements=elements, byte_order=byte_order, encodings=_encodings(elements))


@lru_cache(maxsize=256)
def _encoding_of(transfer_syntax_uid: str) -> tuple[bool, bool, str]:
    """Whether a data set in this transfer syntax is deflated, and its VR encoding (implicit
    or not) and byte order; cached, as pydicom's UID answers in 5 us, per instance."""
    syntax = UID(transfer_syntax_uid)
    implicit = syntax.is_implicit_VR if syntax.is_transfer_syntax else False
    byte_order = ">" if syntax == ExplicitVRBigEndian else "<"
    return syntax == DeflatedExplicitVRLittleEndian, implicit, byte_order


@dataclass(frozen=True)
class _HeaderFormats:
    """An element header in one byte order: tag, VR and 16-bit length; or a 32-bit length."""

    explicit: struct.Struct
    length: struct.Struct


_FORMATS: Final = {
    order: _HeaderFormats(struct.Struct(order + "HH2sH"), struct.Struct(order + "I"))
    for order in "<>"
}


class _Walker:
    """Reads elements out of encoded bytes (PS3.5 §7.1, §7.5); every length is bounds-checked."""

    def __init__(self, data: bytes | memoryview, *, implicit: bool, byte_order: str) -> None:
        self._data = data
        self._implicit = implicit
        self._formats = _FORMATS[byte_order]

    def elements(
        self, position: int, end: int | None, *, last: int, depth: int
    ) -> tuple[Elements, int]:
        """Elements from `position` to `end` (None: to an item delimiter); values kept up to
        tag `last`, later ones only checked to fit, so a truncated data set is noticed."""
        if depth > MAX_DEPTH:
            raise CannotUnderstand(f"sequences nested deeper than {MAX_DEPTH} levels")
        found: Elements = {}
        limit = len(self._data) if end is None else end
        while position < limit:
            tag, vr, length, start = self._header(position)
            if tag == _ITEM_END and end is None:
                return found, start
            if vr == "SQ" or (length == _UNDEFINED and vr == "UN"):
                items, position = self._items(start, length, depth=depth)
                value: bytes | list[Elements] = items
                vr = "SQ"
            elif length == _UNDEFINED:
                position, value = self._skip_fragments(start), b""
            else:
                position = self._fits(start, length)
                value = bytes(self._data[start:position]) if tag <= last else b""
            if tag <= last:
                found[tag] = (vr, value)
        if end is None:
            raise CannotUnderstand("the data set ends inside a sequence item")
        if position != end:
            raise CannotUnderstand("elements run past the end of their item")
        return found, position

    def _header(self, position: int) -> tuple[int, str, int, int]:
        """Tag, VR, value length and value offset of the element at `position`."""
        data, formats = self._data, self._formats
        if position + 8 > len(data):
            raise CannotUnderstand("the data set ends inside an element header")
        group, element, vr_bytes, short_length = formats.explicit.unpack_from(data, position)
        tag = group << 16 | element
        if group == 0xFFFE or self._implicit:
            (length,) = formats.length.unpack_from(data, position + 4)
            return tag, "" if group == 0xFFFE else _dictionary_vr(tag), length, position + 8
        vr = _VRS.get(vr_bytes)
        if vr is None:
            raise CannotUnderstand(f"invalid VR {vr_bytes!r} at offset {position}")
        if vr in _LONG_VRS:
            if position + 12 > len(data):
                raise CannotUnderstand("the data set ends inside an element header")
            (length,) = formats.length.unpack_from(data, position + 8)
            return tag, vr, length, position + 12
        return tag, vr, short_length, position + 8

    def _items(self, position: int, length: int, *, depth: int) -> tuple[list[Elements], int]:
        end = None if length == _UNDEFINED else position + length
        items: list[Elements] = []
        while end is None or position < end:
            tag, _vr, item_length, start = self._header(position)
            if tag == _SEQUENCE_END:
                return items, start
            if tag != _ITEM:
                raise CannotUnderstand(f"expected a sequence item at offset {position}")
            item_end = None if item_length == _UNDEFINED else start + item_length
            item, position = self.elements(start, item_end, last=_UNDEFINED, depth=depth + 1)
            items.append(item)
        if position != end:
            raise CannotUnderstand("sequence items run past the end of their sequence")
        return items, position

    def _skip_fragments(self, position: int) -> int:
        """Skip an undefined-length value made of fragment items (encapsulated pixel data)."""
        while True:
            tag, _vr, length, start = self._header(position)
            if tag == _SEQUENCE_END:
                return start
            if tag != _ITEM or length == _UNDEFINED:
                raise CannotUnderstand(f"expected a fragment item at offset {position}")
            position = self._fits(start, length)

    def _fits(self, start: int, length: int) -> int:
        """The end of a value of `length` bytes at `start`; CannotUnderstand if it is cut off."""
        if start + length > len(self._data):
            raise CannotUnderstand("the data set ends inside an element value")
        return start + length


@lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str:
    """The VR of `tag` in implicit VR data sets; UN for private and unknown tags."""
    try:
        return dictionary_VR(tag)[:2]
    except KeyError:
        return "UN"


def _inflate(data: bytes | memoryview) -> bytes:
    """The deflated data set, inflated (PS3.5 §A.5), bounded against decompression bombs."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        return inflater.decompress(data, MAX_INFLATED_BYTES)
    except zlib.error as error:
        raise CannotUnderstand(f"deflated data set does not inflate: {error}") from error


def _encodings(elements: Elements) -> list[str]:
    """Python codecs for the Specific Character Set (PS3.5 §6.1.2.5); unknown terms as Latin-1."""
    _vr, raw = elements.get(_SPECIFIC_CHARACTER_SET, ("CS", b""))
    terms = raw.decode("ascii", "replace").split("\\") if isinstance(raw, bytes) else [""]
    return [python_encoding.get(term.strip(), "latin_1") for term in terms]


def _nested_values(header: Header, elements: Elements, tag: int) -> Iterator[str]:
    """Values of `tag` inside sequences, depth first in data set order."""
    for key in sorted(elements):
        _vr, value = elements[key]
        if isinstance(value, list):
            for item in value:
                text = _text_of(header, item, tag)
                if text:
                    yield text
                yield from _nested_values(header, item, tag)


def _text_of(header: Header, elements: Elements, tag: int) -> str:
    element = elements.get(tag)
    if element is None:
        return ""
    vr, value = element
    if isinstance(value, list):
        return ""
    if vr in _NUMBER_FORMATS:
        return _numbers(value, vr=vr, byte_order=header.byte_order)
    if vr == "AT":
        return _attribute_tags(value, byte_order=header.byte_order)
    if vr in _BYTE_VRS:
        return value.decode("latin-1").rstrip("\0 ")
    text = _decode(value, header.encodings).rstrip("\0 ")
    if vr in _UNSPLIT_VRS:
        return text
    if "\\" not in text:
        return text.strip(" \0")
    return "\\".join(part.strip(" \0") for part in text.split("\\"))


def _decode(value: bytes, encodings: list[str]) -> str:
    if len(encodings) == 1:
        return value.decode(encodings[0], "replace")
    return decode_bytes(value, encodings, {0x5C, 0x3D, 0x5E})  # ISO 2022 code extensions


def _numbers(value: bytes, *, vr: str, byte_order: str) -> str:
    count = len(value) // struct.calcsize(_NUMBER_FORMATS[vr])
    numbers = struct.unpack_from(f"{byte_order}{count}{_NUMBER_FORMATS[vr]}", value)
    return "\\".join(str(number) for number in numbers)


def _attribute_tags(value: bytes, *, byte_order: str) -> str:
    pairs = struct.unpack_from(f"{byte_order}{len(value) // 4 * 2}H", value)
    return "\\".join(f"({g:04X},{e:04X})" for g, e in zip(pairs[::2], pairs[1::2], strict=False))


def _uid(tags: dict[str, str], name: str) -> str:
    try:
        return validate_uid(tags[name])
    except InvalidUID as error:
        raise CannotUnderstand(f"{name}: {error}") from error
