"""DICOM element lengths checked before GDCM reads a file.

GDCM allocates what an element's length field says before it finds that the file is
shorter: one flipped byte in a header, or a truncated JPEG-2000 slice, makes a "header
only" read allocate gigabytes. So :func:`dicom_length_problem` walks the element headers
first (a few hundred elements, no values read) and refuses a length beyond the end of the
file.

The walk reads the data set in its own transfer syntax: implicit or explicit VR, little
or big endian, and Deflated Explicit VR Little Endian, whose data set (everything after
the file meta group) is one raw deflate stream: it is inflated (its first 16 MiB kept for
the walk, the rest only counted) and the walk goes on in the inflated bytes.
"""

from __future__ import annotations

import os
import struct
import zlib

_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}  # fmt: skip
_ITEM_TAGS = {(0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)}
_PIXEL_DATA = (0x7FE0, 0x0010)
_GROUP_LENGTH = (0x0002, 0x0000)
_TRANSFER_SYNTAX = (0x0002, 0x0010)
IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
_INFLATED_HEAD = 1 << 24  # inflated bytes kept for the walk: the headers, not the pixels
# no 32-bit length can reach past this much more inflated data: counting stops there
_INFLATED_COUNT = _INFLATED_HEAD + (1 << 32)


def dicom_length_problem(path: str | os.PathLike, limit: int = 1 << 16) -> str | None:
    """Why ``path``'s data elements cannot be as long as they say (an element running past
    the end of the file, or of its inflated data set), or None. Walks at most ``limit``
    element headers."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    pos = 132 if data[128:132] == b"DICM" else 0
    return _walk(data, len(data), pos, limit)


def _walk(data: bytes, size: int, pos: int, limit: int, *, syntax: str = "") -> str | None:
    """The length walk from ``pos``; ``size`` is the length of the whole stream (more than
    ``len(data)`` when only the head of an inflated data set is kept). ``syntax``: the
    transfer syntax of the data set (from the file meta group when it has one)."""
    in_pixels = False
    meta_end: int | None = None  # from the meta group's (0002,0000) group length
    for _ in range(limit):
        if syntax == DEFLATED and _past_meta(data, pos, meta_end):
            inflated = _inflate(data, pos)
            if isinstance(inflated, str):
                return inflated
            head, total = inflated
            return _walk(head, total, 0, limit, syntax="1.2.840.10008.1.2.1")
        if pos + 8 > len(data):
            break
        meta = struct.unpack_from("<H", data, pos)[0] == 0x0002  # always explicit LE
        little = meta or syntax != EXPLICIT_BIG
        order = "<" if little else ">"
        tag = struct.unpack_from(order + "HH", data, pos)
        if tag in _ITEM_TAGS:
            length = struct.unpack_from(order + "I", data, pos + 4)[0]
            pos += 8
            if in_pixels and tag == (0xFFFE, 0xE000) and length != _UNDEFINED:
                if length > size - pos:
                    return _too_long(tag, length, size - pos)
                pos += length  # an encapsulated pixel fragment
            continue  # a sequence item: its elements follow
        in_pixels = tag == _PIXEL_DATA
        header = _element_header(data, pos, order, explicit=meta or syntax != IMPLICIT_LITTLE)
        if header is None:
            break
        vr, length, pos = header
        if length == _UNDEFINED or vr == b"SQ":
            continue  # a sequence or encapsulated pixel data: walk into it
        if length > size - pos:
            return _too_long(tag, length, size - pos)
        if tag == _GROUP_LENGTH and length == 4:
            meta_end = pos + 4 + struct.unpack_from("<I", data, pos)[0]
        if tag == _TRANSFER_SYNTAX:
            syntax = data[pos : pos + length].rstrip(b"\0 ").decode("ascii", "replace")
        if in_pixels:
            break
        pos += length
    return None


def _element_header(
    data: bytes, pos: int, order: str, *, explicit: bool
) -> tuple[bytes, int, int] | None:
    """(VR or b"" when implicit, value length, position of the value) of the element at
    ``pos``; None when its header runs past the available data."""
    vr = data[pos + 4 : pos + 6]
    if explicit and vr.isalpha() and vr.isupper():
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                return None
            return vr, struct.unpack_from(order + "I", data, pos + 8)[0], pos + 12
        return vr, struct.unpack_from(order + "H", data, pos + 6)[0], pos + 8
    return b"", struct.unpack_from(order + "I", data, pos + 4)[0], pos + 8


def _past_meta(data: bytes, pos: int, meta_end: int | None) -> bool:
    """Whether ``pos`` is past the file meta group: by its group length when it has one,
    else by the first element outside group 0002."""
    if meta_end is not None:
        return pos >= meta_end
    return pos + 2 > len(data) or struct.unpack_from("<H", data, pos)[0] != 0x0002


def _inflate(data: bytes, start: int) -> tuple[bytes, int] | str:
    """(the first 16 MiB of the raw deflate stream at ``start`` inflated, its inflated
    length) or why it does not inflate. Memory stays bounded: past the head, output is only
    counted (up to the most any 32-bit length can need)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        head = inflater.decompress(memoryview(data)[start:], _INFLATED_HEAD)
        total = len(head)
        while inflater.unconsumed_tail and total < _INFLATED_COUNT:
            total += len(inflater.decompress(inflater.unconsumed_tail, 1 << 20))
        if total < _INFLATED_COUNT:
            total += len(inflater.flush())
    except zlib.error as exc:
        return f"the deflated data set does not inflate ({exc}); refused before decoding"
    return head, total


def _too_long(tag, length: int, left: int) -> str:
    return (
        f"the DICOM element ({tag[0]:04X},{tag[1]:04X}) claims {length} bytes but only {left} "
        "remain in the file (truncated or corrupt); refused before decoding"
    )
