"""Decoding encoded images (the bytes a client sends) into BGR uint8 arrays.

OpenCV never sees bytes that have not been read here first. Each format OpenCV decodes has a
parser below, chosen by the same start-of-file signature OpenCV's decoder checks (the
signatures are disjoint, so the header read here is the header OpenCV decodes); it returns the
size the file declares and rejects a header it cannot read or a file cut short (a JPEG without
its end-of-image marker, a PNG without IEND or with a broken CRC, less pixel data than the
header promises). :func:`check_size` then bounds pixels, sides and decoder memory before
anything is allocated. Bytes no parser claims are rejected, never handed to OpenCV.

PNG: the colour-management and text chunks (iCCP, sRGB, tEXt, ...) are left out before
decoding. OpenCV applies none of them to the pixels, and libpng prints a warning line per image
for the common broken ones (``iCCP: known incorrect sRGB profile``).
"""
from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from .errors import PreprocessError

# Anything smaller carries no usable signal and is almost always a client bug.
DEFAULT_MIN_SIDE = 8
# Decompression-bomb guard: a 631-byte JPEG can declare 30000x30000 pixels.
MAX_PIXELS = 100_000_000
# The longest side a JPEG can declare; no camera or scanner makes a longer one.
MAX_SIDE = 65_535
# Peak memory of cv2.imdecode(..., IMREAD_COLOR) per pixel (VmHWM growth decoding 24 MP images,
# OpenCV 4.11): the BGR result and its copy into numpy. Formats that need more say so in their parser.
BASE_DECODE_BYTES = 6
# Memory allowed per pixel of the pixel limit: every 8-bit format, progressive JPEG (up to 11 bytes
# per pixel) and animated PNG / WebP (12) included, decodes at the full limit; float and JPEG 2000
# images (16 to 24 bytes per pixel) are held to proportionally fewer pixels.
MAX_DECODE_BYTES_PER_PIXEL = 12


@dataclass(frozen=True)
class ImageHeader:
    """What an encoded image declares, read without decoding it."""

    format: str
    width: int
    height: int
    decode_bytes_per_pixel: float = BASE_DECODE_BYTES
    # (start, end) byte ranges left out before decoding: PNG chunks OpenCV does not use.
    drop: tuple[tuple[int, int], ...] = ()
    # Why the data cannot be decoded although the header could be read (a file cut short);
    # decode_image raises it after check_size, so a bomb cut short is reported as a bomb.
    problem: str | None = None

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def payload(self, data: bytes) -> bytes:
        """The bytes to decode: ``data`` without the ``drop`` ranges."""
        if not self.drop:
            return data
        view, parts, pos = memoryview(data), [], 0
        for start, end in self.drop:
            parts.append(view[pos:start])
            pos = end
        parts.append(view[pos:])
        return b"".join(parts)


def decode_image(data: bytes | np.ndarray, min_side: int = DEFAULT_MIN_SIDE,
                 max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode JPEG/PNG/BMP/... bytes to an HxWx3 BGR uint8 array, like ``cv2.imread``; a
    PreprocessError (the client's fault) for anything else, a truncated file, or an image
    outside ``min_side`` / ``max_pixels`` (checked before decoding)."""
    if isinstance(data, np.ndarray):
        data = data.tobytes()
    if not isinstance(data, (bytes, bytearray)):
        raise PreprocessError(f"expected encoded image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise PreprocessError("empty image: the request carried 0 bytes")
    data = bytes(data)
    header = read_header(data)
    check_size(header, min_side, max_pixels)
    if header.problem:
        raise PreprocessError(f"{_cannot_decode(data)}: {header.format}: {header.problem}")
    img = cv2.imdecode(np.frombuffer(header.payload(data), dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise PreprocessError(f"{_cannot_decode(data)}: OpenCV cannot decode this {header.format} data "
                              "(corrupt, or a variant it does not read)")
    h, w = img.shape[:2]
    if (w, h) not in ((header.width, header.height), (header.height, header.width)):  # EXIF may rotate
        raise PreprocessError(f"{_cannot_decode(data)}: the {header.format} header declares "
                              f"{header.width}x{header.height} pixels, the data decodes to {w}x{h}")
    return img


def read_header(data: bytes) -> ImageHeader:
    """The size ``data`` declares, from the header of whichever format it is; PreprocessError for
    bytes of no format OpenCV decodes or a header that does not parse. A file cut short after a
    readable header gives a header whose ``problem`` says so."""
    for fmt in _FORMATS:
        if fmt.signature.match(data):
            parsed, problem = _Parsed(), None
            try:
                fmt.parse(data, parsed)
            except _Invalid as exc:
                if parsed.size is None:
                    raise PreprocessError(f"{_cannot_decode(data)}: {fmt.name}: {exc}") from None
                problem = str(exc)
            width, height = parsed.size
            if width <= 0 or height <= 0:
                raise PreprocessError(f"{_cannot_decode(data)}: {fmt.name}: the header declares "
                                      f"{width}x{height} pixels")
            return ImageHeader(fmt.name, width, height, parsed.bytes_per_pixel, tuple(parsed.drop), problem)
    names = ", ".join(fmt.name for fmt in _FORMATS)
    raise PreprocessError(f"{_cannot_decode(data)}: not an image format this server reads ({names})")


def check_size(header: ImageHeader, min_side: int = DEFAULT_MIN_SIDE, max_pixels: int = MAX_PIXELS) -> None:
    """PreprocessError unless ``header``'s image is within the limits (decompression-bomb guard)."""
    w, h, what = header.width, header.height, f"{header.format} image of {header.width}x{header.height} pixels"
    if header.pixels > max_pixels:
        raise PreprocessError(f"{what} ({header.pixels} pixels) is larger than the {max_pixels} pixel limit")
    if max(w, h) > MAX_SIDE:
        raise PreprocessError(f"{what} has a side longer than the {MAX_SIDE} pixel limit")
    need, allowed = header.pixels * header.decode_bytes_per_pixel, max_pixels * MAX_DECODE_BYTES_PER_PIXEL
    if need > allowed:
        raise PreprocessError(
            f"{what} needs about {need / 1e6:.0f} MB to decode ({header.decode_bytes_per_pixel:g} bytes per "
            f"pixel), more than the {allowed / 1e6:.0f} MB the {max_pixels} pixel limit allows "
            f"({MAX_DECODE_BYTES_PER_PIXEL} bytes per pixel)")
    if min(w, h) < min_side:
        raise PreprocessError(f"image is {w}x{h} pixels; the smallest side must be at least {min_side}")


def _cannot_decode(data: bytes) -> str:
    return f"cannot decode image ({len(data)} bytes, starting {bytes(data[:8])!r})"


# ------------------------------------------------------------------------------ format registry


class _Invalid(Exception):
    """A header that does not parse, or a file cut short; the message says which."""


@dataclass
class _Parsed:
    """What a parser has read so far: ``size`` is set as soon as the header gives it, so a file cut
    short after a readable header is reported with its size (and a bomb as a bomb)."""

    size: tuple[int, int] | None = None
    bytes_per_pixel: float = BASE_DECODE_BYTES
    drop: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class _Format:
    name: str
    signature: re.Pattern[bytes]
    parse: Callable[[bytes, _Parsed], None]


_FORMATS: list[_Format] = []


def _format(name: str, signature: bytes):
    """Register ``parse(data, parsed)``, which fills ``parsed`` or raises _Invalid, for files
    starting with the regex ``signature``: the signature OpenCV's decoder checks (``checkSignature``)."""

    def register(parse: Callable[[bytes, _Parsed], None]) -> Callable[[bytes, _Parsed], None]:
        if any(fmt.name == name for fmt in _FORMATS):
            raise ValueError(f"image format {name!r} registered twice")
        _FORMATS.append(_Format(name, re.compile(signature, re.DOTALL), parse))
        return parse

    return register


def _unpack(fmt: str, data: bytes, offset: int) -> tuple:
    if offset < 0:
        raise _Invalid(f"a header field points to offset {offset}")
    try:
        return struct.unpack_from(fmt, data, offset)
    except struct.error:
        raise _Invalid(f"truncated: the header needs bytes past the end of the file ({len(data)} bytes)") from None


def _need(what: str, start: int, size: int, data: bytes) -> None:
    if start + size > len(data):
        raise _Invalid(f"truncated: {what} needs {size} bytes from offset {start}, "
                       f"the file has {max(len(data) - start, 0)}")


# ------------------------------------------------------------------------------------ formats

# More marker segments, chunks, boxes or attributes than any real file has: bounds the parse time.
_MAX_SEGMENTS = 100_000

_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # not DHT, JPG, DAC
_JPEG_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})


@_format("JPEG", rb"\xff\xd8\xff")
def _jpeg(data: bytes, parsed: _Parsed) -> None:
    """Walk the marker segments to the end-of-image marker; the frame header (SOFn) gives the size.
    A scan's entropy-coded data ends at the first marker other than a stuffed 0xFF00 or RSTn."""
    arr, pos, scanned = np.frombuffer(data, dtype=np.uint8), 2, False
    for _ in range(_MAX_SEGMENTS):
        at = _jpeg_next_marker(data, arr, pos, scanned)
        if at < 0:
            raise _Invalid("truncated: no end-of-image marker" + (" after the scan" if scanned else ""))
        marker = data[at + 1]
        if marker == 0xD9:
            if not scanned:
                raise _Invalid("no scan (image data) before the end-of-image marker")
            return
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
            pos = at + 2
            continue
        if marker == 0xD8:
            raise _Invalid("a second start-of-image marker")
        (length,) = _unpack(">H", data, at + 2)
        if length < 2:
            raise _Invalid(f"marker 0xFF{marker:02X} has length {length}")
        _need(f"marker segment 0xFF{marker:02X}", at + 2, length, data)
        if marker in _JPEG_SOF:
            if parsed.size is not None:
                raise _Invalid("two frame headers")
            precision, height, width, ncomp = _unpack(">BHHB", data, at + 4)
            if height == 0:
                raise _Invalid("height 0 (set later by a DNL marker, which libjpeg does not read)")
            if ncomp == 0 or length < 8 + 3 * ncomp:
                raise _Invalid(f"a frame header with {ncomp} components in {length} bytes")
            parsed.size = (width, height)
            parsed.bytes_per_pixel = _jpeg_bytes_per_pixel(marker, precision, data[at + 10:at + 10 + 3 * ncomp])
        elif marker == 0xDA:
            if parsed.size is None:
                raise _Invalid("a scan before the frame header")
            scanned = True
        pos = at + 2 + length
    raise _Invalid(f"more than {_MAX_SEGMENTS} marker segments")


def _jpeg_next_marker(data: bytes, arr: np.ndarray, pos: int, scanned: bool) -> int:
    """Offset of the first marker at or after ``pos`` (-1: none): 0xFF followed by a byte other than
    0x00 (a stuffed 0xFF in entropy-coded data), 0xFF (fill) or, after a scan header, RSTn (part of
    the scan). Searched in growing windows: little memory however large the file."""
    if pos + 1 < len(data) and data[pos] == 0xFF and data[pos + 1] not in (0x00, 0xFF) \
            and not (scanned and 0xD0 <= data[pos + 1] <= 0xD7):
        return pos  # segments usually follow one another directly
    window = 4096
    while pos + 1 < len(data):
        chunk = arr[pos:pos + window + 1]
        following = chunk[1:]
        hit = (chunk[:-1] == 0xFF) & (following != 0x00) & (following != 0xFF)
        if scanned:
            hit &= (following & 0xF8) != 0xD0
        first = int(hit.argmax())
        if hit[first]:
            return pos + first
        pos += window
        window = min(window * 2, 1 << 22)
    return -1


def _jpeg_bytes_per_pixel(marker: int, precision: int, components: bytes) -> float:
    per_pixel = float(BASE_DECODE_BYTES)
    if marker in _JPEG_PROGRESSIVE:  # libjpeg keeps every component's DCT coefficients (2 bytes each)
        factors = [(hv >> 4, hv & 15) for hv in components[1::3]]
        if min(h * v for h, v in factors) == 0:
            raise _Invalid("a sampling factor of 0")
        samples = sum(h * v for h, v in factors) / (max(h for h, _ in factors) * max(v for _, v in factors))
        per_pixel = max(per_pixel, 3 + 2 * samples)  # measured: 4:2:0 colour 6, 4:4:4 colour 9, CMYK 11
    return per_pixel * 2 if precision > 8 else per_pixel


# Chunks libpng checks and OpenCV never applies to the pixels (it sets no gamma, colour or text
# handling): dropped before decoding, with their warnings.
_PNG_METADATA = frozenset({b"iCCP", b"sRGB", b"gAMA", b"cHRM", b"cICP", b"mDCV", b"cLLI", b"sBIT",
                           b"tEXt", b"zTXt", b"iTXt", b"tIME", b"pHYs", b"sPLT", b"hIST"})


@_format("PNG", rb"\x89PNG\r\n\x1a\n")
def _png(data: bytes, parsed: _Parsed) -> None:
    """Every chunk up to IEND, each CRC checked; IHDR gives the size."""
    view, pos, has_data = memoryview(data), 8, False
    for _ in range(_MAX_SEGMENTS):
        if pos + 8 > len(data):
            raise _Invalid("truncated: no IEND chunk")
        length, kind = _unpack(">I4s", data, pos)
        name = kind.decode("latin-1")
        if parsed.size is None:
            if kind != b"IHDR" or length != 13:
                raise _Invalid("the first chunk is not IHDR")
            parsed.size = _unpack(">II", data, pos + 8)
        _need(f"the {name} chunk", pos, 12 + length, data)
        end = pos + 12 + length
        if zlib.crc32(view[pos + 4:end - 4]) != _unpack(">I", data, end - 4)[0]:
            raise _Invalid(f"the {name} chunk at offset {pos} is corrupt (CRC mismatch)")
        if kind == b"IDAT":
            has_data = True
        elif kind == b"acTL":
            parsed.bytes_per_pixel = 12  # animated: measured 12
        elif kind == b"IEND":
            if not has_data:
                raise _Invalid("no IDAT chunk (no image data)")
            return
        elif kind in _PNG_METADATA:
            parsed.drop.append((pos, end))
        pos = end
    raise _Invalid(f"more than {_MAX_SEGMENTS} chunks")


@_format("WebP", rb"RIFF....WEBP")
def _webp(data: bytes, parsed: _Parsed) -> None:
    """RIFF chunks: VP8X gives the canvas, else the VP8 (lossy) or VP8L (lossless) bitstream header."""
    (riff,) = _unpack("<I", data, 4)
    end, pos, has_image, chunks = 8 + riff, 12, False, 0
    while pos + 8 <= min(end, len(data)):
        chunks += 1
        if chunks > _MAX_SEGMENTS:
            raise _Invalid(f"more than {_MAX_SEGMENTS} chunks")
        kind, length = _unpack("<4sI", data, pos)
        body = pos + 8
        if kind == b"VP8X" and pos == 12:
            flags, = _unpack("<B", data, body)
            parsed.size = (1 + int.from_bytes(_unpack("3s", data, body + 4)[0], "little"),
                           1 + int.from_bytes(_unpack("3s", data, body + 7)[0], "little"))
            if flags & 0x02:
                parsed.bytes_per_pixel = 12  # animated: measured 11
        elif kind == b"VP8 ":
            tag, start, w, h = _unpack("<3s3sHH", data, body)
            if tag[0] & 1 or start != b"\x9d\x01\x2a":
                raise _Invalid("the VP8 bitstream does not start with a key frame")
            parsed.size, has_image = parsed.size or (w & 0x3FFF, h & 0x3FFF), True
        elif kind == b"VP8L":
            signature, bits = _unpack("<BI", data, body)
            if signature != 0x2F:
                raise _Invalid("the VP8L bitstream has a bad signature")
            parsed.size, has_image = parsed.size or ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1), True
        elif kind == b"ANMF":
            has_image = True
        elif pos == 12:
            raise _Invalid(f"the first chunk is {kind!r}, not VP8, VP8L or VP8X")
        if body + length > end:
            raise _Invalid(f"the {kind.decode('latin-1')} chunk runs past the RIFF container")
        pos = body + length + (length & 1)
    _need("the RIFF container", 8, riff, data)
    if parsed.size is None or not has_image:
        raise _Invalid("no image chunk")


@_format("BMP", rb"BM")
def _bmp(data: bytes, parsed: _Parsed) -> None:
    """BITMAPCOREHEADER or any longer info header, as OpenCV reads them."""
    offset, header_size = _unpack("<II", data, 10)
    if header_size >= 36:
        width, height, _planes, bpp, compression = _unpack("<iiHHI", data, 18)
    elif header_size == 12:
        width, height, _planes, bpp = _unpack("<HHHH", data, 18)
        compression = 0
    else:
        raise _Invalid(f"an info header of {header_size} bytes")
    parsed.size = (width, abs(height))
    if compression in (0, 3):  # BI_RGB, BI_BITFIELDS: rows of a fixed size
        _need("the pixel data", offset, (width * bpp + 31) // 32 * 4 * abs(height), data)
    elif compression in (1, 2):  # RLE8, RLE4: the decoder fails if the codes run past the end
        _need("the pixel data", offset, 1, data)
    else:
        raise _Invalid(f"compression {compression} (OpenCV reads uncompressed, bitfields and RLE)")


_TIFF_TYPES = {1: "B", 3: "H", 4: "I", 16: "Q", 6: "b", 8: "h", 9: "i", 17: "q", 13: "I", 18: "Q"}
_TIFF_TAGS = {256: "width", 257: "height", 258: "bits", 273: "strip_offsets", 277: "samples", 278: "rows_per_strip",
              279: "strip_bytes", 284: "planar", 322: "tile_width", 323: "tile_height", 324: "tile_offsets",
              325: "tile_bytes"}


@_format("TIFF", rb"II\*\x00|MM\x00\*|II\+\x00|MM\x00\+")
def _tiff(data: bytes, parsed: _Parsed) -> None:
    """The first IFD (the page OpenCV reads), classic or BigTIFF, either byte order; every strip or
    tile it lists must lie inside the file."""
    tags = _tiff_tags(data)
    if not len(tags.get("width", ())) or not len(tags.get("height", ())):
        raise _Invalid("no ImageWidth / ImageLength")
    width, height = int(tags["width"][0]), int(tags["height"][0])
    parsed.size = (width, height)
    if width <= 0 or height <= 0:
        return
    samples = int(tags.get("samples", [1])[0])
    sample_bytes = -(-int(max(tags.get("bits", [1]), default=1)) // 8)
    planes = samples if int(tags.get("planar", [1])[0]) == 2 else 1
    if "tile_offsets" in tags:
        tile_w, tile_h = int(tags.get("tile_width", [0])[0]), int(tags.get("tile_height", [0])[0])
        if tile_w <= 0 or tile_h <= 0:
            raise _Invalid("tiles without a TileWidth / TileLength")
        offsets, sizes = tags["tile_offsets"], tags.get("tile_bytes")
        pieces = -(-width // tile_w) * -(-height // tile_h) * planes
    else:
        tile_w, tile_h = width, min(int(tags.get("rows_per_strip", [height])[0]) or height, height)
        offsets, sizes = tags.get("strip_offsets"), tags.get("strip_bytes")
        pieces = -(-height // tile_h) * planes
    # OpenCV reads a strip or tile at a time, into a buffer of up to 4 samples per pixel.
    parsed.bytes_per_pixel = BASE_DECODE_BYTES + tile_w * tile_h * max(samples, 4) * sample_bytes / (width * height)
    if offsets is None or sizes is None or len(sizes) != len(offsets):
        raise _Invalid("no strip / tile offsets with their byte counts")
    if len(offsets) < pieces:
        raise _Invalid(f"{len(offsets)} strips or tiles listed, {pieces} needed")
    last = int((offsets.astype(np.uint64) + sizes.astype(np.uint64)).max()) if len(offsets) else 0
    if last > len(data):
        raise _Invalid(f"truncated: pixel data listed up to offset {last}, the file has {len(data)} bytes")


def _tiff_tags(data: bytes) -> dict[str, np.ndarray]:
    """The values of the _TIFF_TAGS in the first IFD."""
    order = "<" if data[:2] == b"II" else ">"
    if _unpack(order + "H", data, 2)[0] == 43:  # BigTIFF
        offset_size, zero, ifd = _unpack(order + "HHQ", data, 4)
        if (offset_size, zero) != (8, 0):
            raise _Invalid(f"a BigTIFF header with offset size {offset_size}")
        (count,) = _unpack(order + "Q", data, ifd)
        first, pointer = ifd + 8, "Q"
    else:
        (ifd,) = _unpack(order + "I", data, 4)
        (count,) = _unpack(order + "H", data, ifd)
        first, pointer = ifd + 2, "I"
    inline = struct.calcsize(pointer)
    entry = np.dtype([("tag", order + "u2"), ("type", order + "u2"), ("count", order + pointer),
                      ("value", f"V{inline}")])
    _need("the first IFD", first, count * entry.itemsize, data)
    entries = np.frombuffer(data, dtype=entry, count=count, offset=first)
    tags: dict[str, np.ndarray] = {}
    for i in np.flatnonzero(np.isin(entries["tag"], list(_TIFF_TAGS))):
        tag, kind, n = int(entries["tag"][i]), int(entries["type"][i]), int(entries["count"][i])
        if kind not in _TIFF_TYPES:
            raise _Invalid(f"tag {tag} has type {kind}")
        dtype = np.dtype(order + _TIFF_TYPES[kind])
        where = first + int(i) * entry.itemsize + 4 + inline
        if n * dtype.itemsize > inline:
            (where,) = _unpack(order + pointer, data, where)
        _need(f"tag {tag}", where, n * dtype.itemsize, data)
        tags.setdefault(_TIFF_TAGS[tag], np.frombuffer(data, dtype=dtype, count=n, offset=where))
    return tags


_PNM_NUMBER = re.compile(rb"(?:\s+|#[^\n\r]*[\n\r])*(\d{1,10})")  # OpenCV's ReadNumber


def _pnm_number(data: bytes, pos: int) -> tuple[int, int]:
    """A header number, and the offset after it and the one byte OpenCV consumes with it."""
    match = _PNM_NUMBER.match(data, pos)
    if match is None:
        raise _Invalid(f"no number at offset {pos}")
    value = int(match.group(1))
    if value > 2**31 - 1:
        raise _Invalid(f"{value} is out of range")
    return value, match.end() + 1


@_format("PNM", rb"P[1-6]\s")
def _pnm(data: bytes, parsed: _Parsed) -> None:
    """PBM / PGM / PPM, ASCII (P1-P3) or binary (P4-P6)."""
    kind = data[1] - ord("0")
    width, pos = _pnm_number(data, 2)
    height, pos = _pnm_number(data, pos)
    parsed.size = (width, height)
    maxval = 1
    if kind not in (1, 4):
        maxval, pos = _pnm_number(data, pos)
    if not 0 < maxval <= 65535:
        raise _Invalid(f"maxval {maxval}")
    channels, sample = (3 if kind in (3, 6) else 1), (2 if maxval > 255 else 1)
    if kind == 4:
        _need("the pixel data", pos, -(-width // 8) * height, data)
    elif kind in (5, 6):
        _need("the pixel data", pos, width * channels * sample * height, data)
    else:  # ASCII: at least one digit per sample, separated except in P1
        _need("the pixel data", pos, width * height * (1 if kind == 1 else 2 * channels) - 1, data)


@_format("PAM", rb"P7\s")
def _pam(data: bytes, parsed: _Parsed) -> None:
    """``KEY value`` lines up to ENDHDR; pixel data follows the ENDHDR line."""
    if data[2:3] not in (b"\n", b"\r"):
        raise _Invalid("P7 is not followed by a line break")
    endhdr = data.find(b"ENDHDR", 3, 65536)
    if endhdr < 0:
        raise _Invalid("no ENDHDR in the first 64 KiB")
    fields = {}
    for line in re.split(rb"[\n\r]", data[3:endhdr]):
        key, _, value = line.strip().partition(b" ")
        if key and not key.startswith(b"#"):
            fields[key.decode("latin-1")] = value.strip()
    try:
        width, height, depth, maxval = (int(fields[key]) for key in ("WIDTH", "HEIGHT", "DEPTH", "MAXVAL"))
    except (KeyError, ValueError):
        raise _Invalid("WIDTH, HEIGHT, DEPTH and MAXVAL must be integers") from None
    parsed.size = (width, height)
    if not (1 <= depth <= 4 and 0 < maxval <= 65535):
        raise _Invalid(f"DEPTH {depth}, MAXVAL {maxval}")
    line_end = re.compile(rb"[\n\r]").search(data, endhdr)
    if line_end is None:
        raise _Invalid("truncated: the ENDHDR line does not end")
    _need("the pixel data", line_end.end(), width * height * depth * (2 if maxval > 255 else 1), data)


_PFM_TOKENS = re.compile(rb"(\S*)\s(\S*)\s(\S*)\s")  # OpenCV reads each up to one whitespace byte


@_format("PFM", rb"P[Ff]\s")
def _pfm(data: bytes, parsed: _Parsed) -> None:
    """Float RGB (PF) or grey (Pf): width, height, scale, then 4-byte floats."""
    match = _PFM_TOKENS.match(data, 3)
    if data[2:3] != b"\n" or match is None or not (match.group(1).isdigit() and match.group(2).isdigit()):
        raise _Invalid("the header is not 'PF' / 'Pf', width, height and scale on their own lines")
    width, height = int(match.group(1)), int(match.group(2))
    parsed.size, parsed.bytes_per_pixel = (width, height), 24  # measured: float rows, converted in place
    try:
        scale = float(match.group(3))
    except ValueError:
        scale = 0.0
    if scale == 0:
        raise _Invalid(f"scale {match.group(3)!r}")
    _need("the pixel data", match.end(), width * height * (3 if data[1:2] == b"F" else 1) * 4, data)


@_format("Sun raster", rb"\x59\xa6\x6a\x95")
def _sun_raster(data: bytes, parsed: _Parsed) -> None:
    width, height, depth, _length, kind, _map_type, map_length = _unpack(">7I", data, 4)
    parsed.size = (width, height)
    if depth not in (1, 8, 24, 32) or kind > 3:
        raise _Invalid(f"depth {depth}, type {kind}")
    if kind == 2:  # byte-encoded (RLE): the decoder fails if the codes run past the end
        _need("the pixel data", 32 + map_length, 1, data)
    else:
        _need("the pixel data", 32 + map_length, (width * depth + 15) // 16 * 2 * height, data)


_J2K_START = b"\xff\x4f\xff\x51"  # SOC, SIZ


@_format("JPEG 2000", rb"\x00\x00\x00\x0cjP  \r\n\x87\n|\xff\x4f\xff\x51")
def _jpeg2000(data: bytes, parsed: _Parsed) -> None:
    """A JP2 file's codestream box (jp2c), or a raw codestream: SIZ gives the size, and the
    codestream must end with the end-of-codestream marker."""
    start, end = 0, len(data)
    if not data.startswith(_J2K_START):
        start, end = _jp2_codestream(data)
    if data[start:start + 4] != _J2K_START:
        raise _Invalid("the codestream does not start with SOC, SIZ")
    x1, y1, x0, y0 = _unpack(">IIII", data, start + 8)
    (components,) = _unpack(">H", data, start + 40)
    parsed.size = (x1 - x0, y1 - y0)
    parsed.bytes_per_pixel = 4 + 4 * components  # OpenJPEG: an int32 per sample (measured 16 for RGB)
    if end > len(data):
        raise _Invalid(f"truncated: the codestream box ends at offset {end}, the file has {len(data)} bytes")
    if data[end - 2:end] != b"\xff\xd9":
        raise _Invalid("truncated: the codestream has no end-of-codestream marker")


def _jp2_codestream(data: bytes) -> tuple[int, int]:
    """Start and end of the jp2c box's contents (the end may lie past a truncated file's end)."""
    pos, boxes = 0, 0
    while pos + 8 <= len(data) and boxes < _MAX_SEGMENTS:
        boxes += 1
        length, kind = _unpack(">I4s", data, pos)
        header = 8
        if length == 1:
            (length,) = _unpack(">Q", data, pos + 8)
            header = 16
        elif length == 0:
            length = len(data) - pos
        if length < header:
            raise _Invalid(f"a {kind!r} box of {length} bytes")
        if kind == b"jp2c":
            return pos + header, pos + length
        pos += length
    raise _Invalid(f"more than {_MAX_SEGMENTS} boxes" if boxes == _MAX_SEGMENTS else "truncated: no codestream (jp2c) box")


_HDR_SIZE = re.compile(rb"-Y\s*(\d{1,9})\s*\+X\s*(\d{1,9})")


@_format("Radiance HDR", rb"#\?(?:RADIANCE|RGBE)")
def _radiance(data: bytes, parsed: _Parsed) -> None:
    """Header lines up to a blank line, then the ``-Y height +X width`` line (the only
    orientation OpenCV reads), then RGBE scanlines."""
    blank = data.find(b"\n\n", 0, 65536)
    line_end = data.find(b"\n", blank + 2) if blank >= 0 else -1
    if line_end < 0:
        raise _Invalid("no end of header and resolution line in the first 64 KiB")
    match = _HDR_SIZE.match(data, blank + 2, line_end)
    if match is None:
        raise _Invalid(f"resolution line {data[blank + 2:line_end][:40]!r} is not '-Y height +X width'")
    height, width = int(match.group(1)), int(match.group(2))
    parsed.size, parsed.bytes_per_pixel = (width, height), 16  # measured 15: float RGB, then 8 bits
    # Each run-length scanline takes at least 4 bytes plus a 2-byte run per 127 pixels per channel.
    row = 4 + 8 * -(-width // 127) if 8 <= width <= 0x7FFF else 4 * width
    _need("the pixel data", line_end + 1, row * height, data)


_EXR_LINES_PER_CHUNK = {0: 1, 1: 1, 2: 1, 3: 16, 4: 32, 5: 16, 6: 32, 7: 32, 8: 32, 9: 256}


@_format("OpenEXR", rb"\x76\x2f\x31\x01")
def _openexr(data: bytes, parsed: _Parsed) -> None:
    """Single-part scanline files: the header's dataWindow gives the size; the offset table must
    point at chunks inside the file. (OpenCV reads OpenEXR only if OPENCV_IO_ENABLE_OPENEXR is set.)"""
    (version,) = _unpack("<I", data, 4)
    if version & 0xFF != 2 or version & 0x1A00:
        raise _Invalid("only single-part scanline OpenEXR files (version 2) are read")
    pos, attributes = 8, {}
    while len(attributes) < _MAX_SEGMENTS:
        name_end = data.find(b"\x00", pos, pos + 256)
        if name_end == pos:
            pos += 1
            break
        type_end = data.find(b"\x00", name_end + 1, name_end + 257) if name_end > 0 else -1
        if type_end < 0:
            raise _Invalid("truncated: an attribute without a name and type")
        (size,) = _unpack("<i", data, type_end + 1)
        _need("an attribute", type_end + 5, max(size, 0), data)
        attributes[data[pos:name_end]] = (data[name_end + 1:type_end], type_end + 5, size)
        pos = type_end + 5 + max(size, 0)
    else:
        raise _Invalid(f"more than {_MAX_SEGMENTS} header attributes")
    kind, where, size = attributes.get(b"dataWindow", (b"", 0, 0))
    compression = attributes.get(b"compression", (b"", 0, 0))
    if kind != b"box2i" or size != 16 or compression[0] != b"compression" or data[compression[1]] > 9:
        raise _Invalid("no dataWindow or compression attribute")
    x0, y0, x1, y1 = _unpack("<4i", data, where)
    width, height = x1 - x0 + 1, y1 - y0 + 1
    parsed.size, parsed.bytes_per_pixel = (width, height), 8  # measured 6 for float RGB: a chunk at a time
    if width <= 0 or height <= 0:
        return
    chunks = -(-height // _EXR_LINES_PER_CHUNK[data[compression[1]]])
    _need("the offset table", pos, 8 * chunks, data)
    offsets = np.frombuffer(data, dtype="<u8", count=chunks, offset=pos)
    if int(offsets.min()) < pos + 8 * chunks or int(offsets.max()) + 8 > len(data):
        raise _Invalid("truncated: the offset table points outside the file")
    arr = np.frombuffer(data, dtype=np.uint8)
    sizes = arr[offsets[:, None].astype(np.int64) + np.arange(4, 8)].copy().view("<i4").ravel()
    if int(sizes.min()) < 0 or int((offsets + 8 + sizes.astype(np.uint64)).max()) > len(data):
        raise _Invalid("truncated: a chunk runs past the end of the file")
