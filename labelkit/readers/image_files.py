"""Facts about one image file without decoding its pixels: content hash, size, soundness, properties.

The header gives the size; PNG chunks and their CRCs, and a JPEG's segments and end marker, are
checked here without Pillow; anything else goes through Pillow, which also words the error.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Sequence

from labelkit.properties import PROPERTY_COLUMNS, image_properties_from_bytes


def describe_image_file(path: Path | str, *, properties: bool = True) -> dict:
    """Return content hash, byte size, width/height, `error` and the image properties of one image file.

    The header gives the size without decoding pixels; `verify()` walks PNG chunks and their
    CRCs, and a JPEG must end in its EOI marker, which together catch truncated files cheaply.
    PNG and JPEG files that pass :func:`png_size` / :func:`jpeg_size` skip Pillow (its plugin
    probing costs more than reading and hashing a small file); anything they do not vouch for
    goes through Pillow, which also words the error. The content hash is the SHA-1 of the
    file's bytes (as since the first release). With `properties`, a sound image is also decoded
    once, at thumbnail size, for the ``prop_*`` columns (:func:`labelkit.properties.image_properties`).
    """
    row = {"content_hash": None, "bytes": None, "width": None, "height": None, "error": None,
           **dict.fromkeys(PROPERTY_COLUMNS)}
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        row["error"] = f"unreadable file: {exc.strerror}"
        return row
    row["bytes"] = len(data)
    row["content_hash"] = hashlib.sha1(data).hexdigest()
    if not data:
        row["error"] = "empty file (0 bytes)"
        return row
    size = png_size(data) if data[:8] == PNG_SIGNATURE else jpeg_size(data) if data[:2] == b"\xff\xd8" else None
    if size is not None:
        row["width"], row["height"] = size
        if properties:
            row.update(image_properties_from_bytes(data))
        return row
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            row["width"], row["height"] = im.size
            fmt = im.format
            im.verify()
        if fmt == "JPEG" and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
            row["error"] = "truncated image (JPEG end marker missing)"
    except UnidentifiedImageError:
        row["error"] = "not a readable image"
    except Exception as exc:  # Pillow raises many types for damaged files
        row["error"] = f"corrupt image ({type(exc).__name__}: {exc})"[:200]
    if properties and row["error"] is None:
        row.update(image_properties_from_bytes(data))
    return row


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Bit depths Pillow opens per PNG colour type (PNG spec, table 11.1).
PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# JPEG start-of-frame markers (hold the size); C4, C8 and CC are other segments.
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def png_size(data: bytes) -> tuple[int, int] | None:
    """Return (width, height) of a complete, well-formed PNG, or None when it is not one.

    Walks every chunk and checks its CRC up to IEND, as Pillow's `verify()` does, without
    decompressing pixel data. None means "ask Pillow", not "broken".
    """
    import struct
    import zlib

    end = len(data)
    if end < 45 or data[12:16] != b"IHDR" or data[8:12] != b"\x00\x00\x00\r":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    if not width or not height or depth not in PNG_DEPTHS.get(colour, ()):
        return None
    pos = 8
    while pos + 12 <= end:
        length = int.from_bytes(data[pos:pos + 4], "big")
        stop = pos + 8 + length
        if stop + 4 > end:
            return None
        if zlib.crc32(data[pos + 4:stop]) != int.from_bytes(data[stop:stop + 4], "big"):
            return None
        if data[pos + 4:pos + 8] == b"IEND":
            return width, height
        pos = stop + 4
    return None


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Return (width, height) of a JPEG whose segments are sound up to its scan and that ends in EOI.

    Pillow reads no further than the start of scan when it opens a JPEG either. Only the common
    segments are vouched for (APPn, COM, DQT, DHT, DRI, an 8-bit SOF with 1, 3 or 4 components,
    then SOS); None means "ask Pillow".
    """
    if data[:3] != b"\xff\xd8\xff" or not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        return None
    pos, end, size = 2, len(data), None
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        body = pos + 4
        pos += 2 + length
        if length < 2 or pos > end:
            return None
        if marker == 0xDA:
            return size
        if marker in JPEG_SOF:
            layers = data[body + 5] if length >= 8 else 0
            if size is not None or data[body] != 8 or layers not in (1, 3, 4) or length != 8 + 3 * layers:
                return None
            height, width = (data[body + 1] << 8) | data[body + 2], (data[body + 3] << 8) | data[body + 4]
            if not width or not height:
                return None
            size = (width, height)
        elif marker == 0xDB:  # quantisation tables: 64 entries of 1 or 2 bytes each
            at = body
            while at < pos:
                at += 1 + 64 * (2 if data[at] >> 4 else 1)
            if at != pos:
                return None
        elif not (0xE0 <= marker <= 0xEF or marker in (0xFE, 0xC4, 0xDD)):
            return None
    return None


FACT_COLUMNS = ("content_hash", "bytes", "width", "height", "error", *PROPERTY_COLUMNS)


def describe_image_files(paths: Sequence[str], *, properties: bool = True) -> dict[str, list]:
    """Return :func:`describe_image_file` of many files as columns (one task of the process pool).

    The common case (a sound PNG or JPEG) is inlined with raw `os.read`, which costs half of
    `open().read()` on small files; any other file takes :func:`describe_image_file`.
    """
    out = [[] for _ in FACT_COLUMNS]
    no_properties = (None,) * len(PROPERTY_COLUMNS)
    sha1 = hashlib.sha1
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                data = os.read(fd, 1 << 20)
                while len(data) and (more := os.read(fd, 1 << 20)):
                    data += more
            finally:
                os.close(fd)
        except OSError:
            data = b""
        size = png_size(data) if data[:8] == PNG_SIGNATURE else jpeg_size(data) if data[:2] == b"\xff\xd8" else None
        if size is not None:
            props = image_properties_from_bytes(data) if properties else None
            row = (sha1(data).hexdigest(), len(data), size[0], size[1], None,
                   *(tuple(props[k] for k in PROPERTY_COLUMNS) if props is not None else no_properties))
        else:
            facts = describe_image_file(path, properties=properties)
            row = tuple(facts[k] for k in FACT_COLUMNS)
        for column, value in zip(out, row):
            column.append(value)
    return dict(zip(FACT_COLUMNS, out))
