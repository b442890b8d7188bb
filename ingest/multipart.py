"""MIME multipart bodies (RFC 2046 §5.1): STOW-RS `multipart/related` and browser
`multipart/form-data` uploads. Parts are sliced out of the body as they are: DICOM bytes are
never re-encoded on the way in.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass

from ingest.errors import CannotUnderstand

_BOUNDARY = re.compile(r"""boundary=(?:"([^"]+)"|([^;,\s]+))""", re.IGNORECASE)


@dataclass(frozen=True)
class Part:
    """One body part: its headers (names in lower case) and its content."""

    headers: dict[str, str]
    content: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


def boundary_of(content_type: str) -> str:
    """The boundary parameter of a multipart content type; `CannotUnderstand` if absent."""
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise CannotUnderstand("multipart content type without a boundary")
    return match[1] or match[2]


def split_parts(body: bytes, boundary: str) -> Iterator[Part]:
    """The parts of `body`; `CannotUnderstand` if it is not a well-formed multipart body."""
    delimiter = b"--" + boundary.encode("latin-1")
    start = body.find(delimiter)
    if start < 0:
        raise CannotUnderstand("multipart body without its boundary")
    position = start + len(delimiter)
    while not body.startswith(b"--", position):
        header_end = body.find(b"\r\n\r\n", position)
        end = body.find(b"\r\n" + delimiter, header_end)
        if header_end < 0 or end < 0:
            raise CannotUnderstand("multipart body ends inside a part")
        yield Part(_headers(body[position:header_end]), body[header_end + 4 : end])
        position = end + 2 + len(delimiter)


def _headers(block: bytes) -> dict[str, str]:
    headers = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return headers
