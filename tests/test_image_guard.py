"""decode_image's guard: sizes read from the header before decoding (decompression bombs),
truncated files rejected, libpng's warnings kept out of the log, and pixels bit-exact with
plain ``cv2.imdecode(buf, cv2.IMREAD_COLOR)`` for valid images."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from tritongen.processing import image
from tritongen.processing.errors import PreprocessError
from tritongen.processing.image import MAX_PIXELS, decode_image, read_header
from tritongen.processing.pipeline import PipelineConfig, Preprocessor

from .conftest import skimage_photo

REPO = Path(__file__).resolve().parents[1]
SKIMAGE_DATA = Path(importlib.util.find_spec("skimage").origin).parent / "data"  # real photos


def _encode(ext: str, img: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok, ext
    return buf.tobytes()


def _pil(img: np.ndarray, mode: str, fmt: str, **options) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img[:, :, ::-1])).convert(mode).save(out, fmt, **options)
    return out.getvalue()


def _tifffile(img: np.ndarray, **options) -> bytes:
    import tifffile

    out = io.BytesIO()
    tifffile.imwrite(out, np.ascontiguousarray(img[:, :, ::-1]), photometric="rgb", **options)
    return out.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        chunks.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def _png_from(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(_png_chunk(kind, body) for kind, body in chunks)


def _tiff(width: int, height: int, pixels: bytes, order: str = "<", big: bool = False) -> bytes:
    """A minimal uncompressed 8-bit grey TIFF, one strip; its byte count says width*height."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, None),
               (277, 3, 1), (278, 4, height), (279, 4, width * height)]
    pointer, count, head = ("Q", "Q", 16) if big else ("I", "H", 8)
    inline = struct.calcsize(pointer)
    ifd_size = struct.calcsize(count) + len(entries) * (4 + 2 * inline) + inline
    out = (b"II" if order == "<" else b"MM") + (struct.pack(order + "HHHQ", 43, 8, 0, head) if big
                                               else struct.pack(order + "HI", 42, head))
    out += struct.pack(order + count, len(entries))
    for tag, kind, value in entries:
        value = head + ifd_size if value is None else value
        packed = struct.pack(order + ("H" if kind == 3 else "I"), value)
        out += struct.pack(order + "HH" + pointer, tag, kind, 1) + packed.ljust(inline, b"\x00")
    return out + struct.pack(order + pointer, 0) + pixels


# ---------------------------------------------------------------------------- bombs

def _jpeg_bomb(width: int, height: int, progressive: bool = False) -> bytes:
    """The 631-byte JPEG of the issue: an 8x8 image whose frame header declares width x height."""
    data = bytearray(_encode(".jpg", np.zeros((8, 8, 3), np.uint8), cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)))
    sof = data.index(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _png_bomb(width: int, height: int) -> bytes:
    chunks = _png_chunks(_encode(".png", np.zeros((16, 16, 3), np.uint8)))
    chunks[0] = (b"IHDR", struct.pack(">II", width, height) + chunks[0][1][8:])
    return _png_from(chunks)


def _webp_lossless_bomb(width: int, height: int) -> bytes:
    data = bytearray(_encode(".webp", np.zeros((16, 16, 3), np.uint8), cv2.IMWRITE_WEBP_QUALITY, 101))
    assert data[12:16] == b"VP8L"
    (bits,) = struct.unpack_from("<I", data, 21)
    struct.pack_into("<I", data, 21, (width - 1) | (height - 1) << 14 | bits & ~((1 << 28) - 1))
    return bytes(data)


def _webp_lossy_bomb(width: int, height: int) -> bytes:
    data = bytearray(_encode(".webp", np.zeros((16, 16, 3), np.uint8), cv2.IMWRITE_WEBP_QUALITY, 90))
    assert data[12:16] == b"VP8 "
    struct.pack_into("<HH", data, 26, width, height)
    return bytes(data)


def _webp_canvas_bomb(width: int, height: int, filler: bytes = b"") -> bytes:
    lossless = _encode(".webp", np.zeros((16, 16, 3), np.uint8), cv2.IMWRITE_WEBP_QUALITY, 101)[12:]
    canvas = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4 + canvas + filler + lossless
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _jpeg2000_bomb(width: int, height: int) -> bytes:
    data = bytearray(_encode(".jp2", np.zeros((64, 64, 3), np.uint8)))
    siz = data.index(b"\xff\x4f\xff\x51")
    struct.pack_into(">II", data, siz + 8, width, height)
    return bytes(data)


def _bmp_header(width: int, height: int) -> bytes:
    return struct.pack("<2sIHHI", b"BM", 0, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 0, 0, 0, 0)


def _sun_raster_header(width: int, height: int) -> bytes:
    return struct.pack(">8I", 0x59A66A95, width, height, 24, width * height * 3, 1, 0, 0)


BOMBS = {  # name -> (bytes, declared width, height)
    "jpeg": (_jpeg_bomb(30000, 30000), 30000, 30000),
    "jpeg_progressive": (_jpeg_bomb(30000, 30000, progressive=True), 30000, 30000),
    "png": (_png_bomb(30000, 30000), 30000, 30000),
    "bmp": (_bmp_header(30000, 30000) + b"\x00" * 64, 30000, 30000),
    "tiff": (_tiff(30000, 30000, b"\x00" * 64), 30000, 30000),
    "tiff_big_endian": (_tiff(30000, 30000, b"\x00" * 64, order=">"), 30000, 30000),
    "bigtiff": (_tiff(30000, 30000, b"\x00" * 64, big=True), 30000, 30000),
    "webp_lossless": (_webp_lossless_bomb(16384, 16384), 16384, 16384),
    "webp_lossy": (_webp_lossy_bomb(16383, 16383), 16383, 16383),
    "webp_canvas": (_webp_canvas_bomb(30000, 30000), 30000, 30000),
    "ppm": (b"P6\n30000 30000\n255\n" + b"\x00" * 64, 30000, 30000),
    "pgm_ascii": (b"P2\n# comment\n30000 30000\n255\n" + b"0 " * 64, 30000, 30000),
    "pam": (b"P7\nWIDTH 30000\nHEIGHT 30000\nDEPTH 3\nMAXVAL 255\nENDHDR\n" + b"\x00" * 64, 30000, 30000),
    "pfm": (b"PF\n30000 30000\n-1.0\n" + b"\x00" * 64, 30000, 30000),
    "sun_raster": (_sun_raster_header(30000, 30000) + b"\x00" * 64, 30000, 30000),
    "radiance_hdr": (b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 30000 +X 30000\n" + b"\x00" * 64, 30000, 30000),
    "jpeg2000": (_jpeg2000_bomb(30000, 30000), 30000, 30000),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bomb_rejected_from_its_header(name):
    data, width, height = BOMBS[name]
    assert len(data) < 2000
    start = time.perf_counter()
    with pytest.raises(PreprocessError) as raised:
        decode_image(data)
    assert time.perf_counter() - start < 0.5
    message = str(raised.value)
    assert f"{width}x{height} pixels" in message and f"{MAX_PIXELS} pixel limit" in message, message


def test_bombs_do_not_raise_peak_memory(tmp_path):
    """In a fresh process, so the peak (VmHWM) is this test's: all bombs together add < 50 MB,
    where decoding the first one alone takes 2.7 GB (the 30000x30000 BGR result)."""
    for name, (data, _, _) in BOMBS.items():
        (tmp_path / name).write_bytes(data)
    script = """
import json, sys, time
from pathlib import Path
import cv2, numpy as np
from tritongen.processing.errors import PreprocessError
from tritongen.processing.image import decode_image

def peak_kb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))

decode_image(cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes())
before, slowest, accepted = peak_kb(), 0.0, []
for path in sorted(Path(sys.argv[1]).iterdir()):
    start = time.perf_counter()
    try:
        decode_image(path.read_bytes())
        accepted.append(path.name)
    except PreprocessError:
        pass
    slowest = max(slowest, time.perf_counter() - start)
print(json.dumps({"growth_mb": (peak_kb() - before) / 1024, "slowest_s": slowest, "accepted": accepted}))
"""
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["accepted"] == []
    assert result["growth_mb"] < 50, result
    assert result["slowest_s"] < 0.5, result


def test_memory_hungry_formats_get_fewer_pixels():
    """A float image under the pixel limit, whose decoder needs 24 bytes per pixel."""
    with pytest.raises(PreprocessError, match=r"PFM image of 9000x9000 pixels needs about 1944 MB to decode"):
        decode_image(b"PF\n9000 9000\n-1.0\n" + b"\x00" * 64)
    with pytest.raises(PreprocessError, match=r"side longer than the 65535 pixel limit"):
        decode_image(_png_bomb(70000, 100))


def test_configured_limit_applies():
    data = _encode(".jpg", skimage_photo("astronaut.png"))  # 512x512
    with pytest.raises(PreprocessError, match=r"JPEG image of 512x512 pixels \(262144 pixels\) is larger than the "
                                              r"200000 pixel limit"):
        decode_image(data, max_pixels=200_000)
    assert decode_image(data, max_pixels=512 * 512).shape == (512, 512, 3)

    fields = dict(task="classification", feeds={"x": "image"}, outputs=["y"], preprocess=[{"ToCHWImage": None}])
    config = PipelineConfig(**fields, max_image_pixels=200_000)
    with pytest.raises(PreprocessError, match="200000 pixel limit"):
        Preprocessor(config)([data])
    loaded = PipelineConfig.from_dict(json.loads(config.to_json()))
    assert loaded.max_image_pixels == 200_000
    assert PipelineConfig.from_dict(fields).max_image_pixels == MAX_PIXELS  # pipeline.json written before the field
    with pytest.raises(ValueError, match="max_image_pixels"):
        PipelineConfig(**fields, max_image_pixels=0)


# ------------------------------------------------------------------------------- truncation

PHOTO = skimage_photo("chelsea.png")[:120, :160]  # a real photo, cut small
GREY = cv2.cvtColor(PHOTO, cv2.COLOR_BGR2GRAY)

VALID = {
    "jpeg": lambda: _encode(".jpg", PHOTO),
    "jpeg_progressive": lambda: _encode(".jpg", PHOTO, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    "jpeg_grey": lambda: _encode(".jpg", GREY),
    "jpeg_cmyk": lambda: _pil(PHOTO, "CMYK", "JPEG"),
    "png": lambda: _encode(".png", PHOTO),
    "png_grey": lambda: _encode(".png", GREY),
    "png_16bit": lambda: _encode(".png", PHOTO.astype(np.uint16) * 257),
    "png_16bit_grey": lambda: _encode(".png", GREY.astype(np.uint16) * 257),
    "png_rgba": lambda: _encode(".png", cv2.cvtColor(PHOTO, cv2.COLOR_BGR2BGRA)),
    "png_grey_alpha": lambda: _pil(PHOTO, "LA", "PNG"),
    "png_palette": lambda: _pil(PHOTO, "P", "PNG"),
    "png_palette_transparent": lambda: _pil(PHOTO, "P", "PNG", transparency=0),
    "png_1bit": lambda: _pil(PHOTO, "1", "PNG"),
    "bmp": lambda: _encode(".bmp", PHOTO),
    "bmp_grey": lambda: _encode(".bmp", GREY),
    "bmp_palette": lambda: _pil(PHOTO, "P", "BMP"),
    "tiff": lambda: _encode(".tif", PHOTO),
    "tiff_16bit": lambda: _encode(".tif", PHOTO.astype(np.uint16) * 257),
    "tiff_float": lambda: _encode(".tif", PHOTO.astype(np.float32) / 255),
    "tiff_lzw": lambda: _pil(PHOTO, "RGB", "TIFF", compression="tiff_lzw"),
    "tiff_big_endian": lambda: _tifffile(PHOTO, byteorder=">"),
    "bigtiff": lambda: _tifffile(PHOTO, bigtiff=True),
    "tiff_tiled": lambda: _tifffile(PHOTO, tile=(32, 32)),  # 120 rows: the last tiles are partial
    "tiff_minimal": lambda: _tiff(16, 12, bytes(range(192))),
    "webp": lambda: _encode(".webp", PHOTO, cv2.IMWRITE_WEBP_QUALITY, 90),
    "webp_lossless": lambda: _encode(".webp", PHOTO, cv2.IMWRITE_WEBP_QUALITY, 101),
    "webp_alpha": lambda: _pil(PHOTO, "RGBA", "WEBP"),
    "ppm": lambda: _encode(".ppm", PHOTO),
    "ppm_16bit": lambda: _encode(".ppm", PHOTO.astype(np.uint16) * 257),
    "pgm": lambda: _encode(".pgm", GREY),
    "pbm": lambda: _encode(".pbm", (GREY > 128).astype(np.uint8) * 255),
    "ppm_ascii": lambda: _encode(".ppm", PHOTO, cv2.IMWRITE_PXM_BINARY, 0),
    "pam": lambda: _encode(".pam", PHOTO),
    "pfm": lambda: _encode(".pfm", PHOTO.astype(np.float32) / 255),
    "sun_raster": lambda: _encode(".ras", PHOTO),
    "radiance_hdr": lambda: _encode(".hdr", PHOTO.astype(np.float32) / 255),
    "jpeg2000": lambda: _encode(".jp2", PHOTO),
    "jpeg2000_codestream": lambda: _pil(PHOTO, "RGB", "JPEG2000", no_jp2=True),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_odd_formats_decode_bit_exact(name):
    data = VALID[name]()
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert expected is not None
    decoded = decode_image(data)
    assert decoded.dtype == np.uint8 and decoded.shape == expected.shape
    np.testing.assert_array_equal(decoded, expected)
    header = read_header(data)
    assert (header.width, header.height) == (expected.shape[1], expected.shape[0]) and header.problem is None


@pytest.mark.parametrize("name", sorted(VALID))
def test_truncated_files_rejected(name):
    data = VALID[name]()
    cuts = {len(data) // 2, len(data) * 9 // 10, 20}
    if not name.endswith("ascii"):  # an ASCII file's last bytes may be a line break
        cuts.add(len(data) - 2)
    for cut in sorted(cuts):
        with pytest.raises(PreprocessError, match="cannot decode|smallest side"):
            decode_image(data[:cut])


def test_truncated_jpeg_and_png_say_why():
    jpeg = _encode(".jpg", PHOTO)
    with pytest.raises(PreprocessError, match="JPEG: truncated: no end-of-image marker after the scan"):
        decode_image(jpeg[:-2])
    decode_image(jpeg + b"\x00" * 100)  # trailing bytes after the end-of-image marker are fine, as for libjpeg

    png = _encode(".png", PHOTO)
    chunks = _png_chunks(png)
    with pytest.raises(PreprocessError, match="PNG: truncated: no IEND chunk"):
        decode_image(png[:-12])
    broken = bytearray(png)
    broken[8 + 25 + 8 + 10] ^= 0xFF  # a byte of the first IDAT's data
    with pytest.raises(PreprocessError, match="the IDAT chunk at offset 33 is corrupt \\(CRC mismatch\\)"):
        decode_image(bytes(broken))
    idat = zlib.compress(zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))[:5000])
    short = [chunks[0], (b"IDAT", idat), (b"IEND", b"")]  # valid chunks, half the rows
    with pytest.raises(PreprocessError, match="OpenCV cannot decode this PNG data"):
        decode_image(_png_from(short))


def test_parse_time_is_bounded():
    """Files made of the smallest segments a parser steps through: rejected after _MAX_SEGMENTS."""
    jpeg = _encode(".jpg", PHOTO)
    sof = jpeg.index(b"\xff\xc0")
    many = {
        "JPEG": jpeg[:sof] + b"\xff\x01" * 200_000 + jpeg[sof:],  # TEM markers
        "PNG": _png_from(_png_chunks(_encode(".png", PHOTO))[:1] + [(b"teXt", b"")] * 200_000),
        "WebP": _webp_canvas_bomb(16, 16, filler=b"XTRA\x00\x00\x00\x00" * 200_000),
    }
    for name, data in many.items():
        start = time.perf_counter()
        with pytest.raises(PreprocessError, match=f"{name}: more than {image._MAX_SEGMENTS}"):
            decode_image(data)
        assert time.perf_counter() - start < 1.0, name
    scan = jpeg[:-2] + b"\xff\x00" * 5_000_000 + b"\xff\xd9"  # 10 MB of stuffed bytes in one scan
    start = time.perf_counter()
    assert read_header(scan).problem is None
    assert time.perf_counter() - start < 0.5


def test_unknown_formats_are_not_handed_to_opencv():
    gif = b"GIF89a\x10\x00\x10\x00\x80\x00\x00" + b"\x00" * 40
    with pytest.raises(PreprocessError, match="not an image format this server reads \\(JPEG, PNG, WebP, BMP, TIFF"):
        decode_image(gif)


# ------------------------------------------------------------------------ log and bit-exactness

def test_png_metadata_chunks_do_not_reach_libpng(capfd):
    """astronaut.png carries the iCCP profile libpng warns about; bogus profile and text chunks warn too.
    Dropping gamma and significant-bits chunks keeps the pixels: OpenCV never applied them."""
    astronaut = (SKIMAGE_DATA / "astronaut.png").read_bytes()
    assert b"iCCP" in astronaut
    chunks = _png_chunks(_encode(".png", PHOTO))
    noisy = _png_from(chunks[:1] + [(b"gAMA", struct.pack(">I", 100000)), (b"sBIT", b"\x05\x05\x05"),
                                    (b"zTXt", b"k\x00\x00not zlib"), (b"iCCP", b"x\x00\x00garbage")] + chunks[1:])
    capfd.readouterr()
    decoded = [decode_image(astronaut), decode_image(noisy)]
    assert capfd.readouterr().err == ""
    for data, got in zip([astronaut, noisy], decoded):
        np.testing.assert_array_equal(got, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    assert "libpng warning" in capfd.readouterr().err  # the same bytes, straight to OpenCV


def _real_photos() -> list[Path]:
    return sorted(p for p in SKIMAGE_DATA.iterdir() if p.suffix in (".png", ".jpg"))


def test_real_photos_bit_exact():
    assert len(_real_photos()) >= 20
    for path in _real_photos():
        data = path.read_bytes()
        expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(decode_image(data, min_side=1), expected, err_msg=path.name)
        for params in ([cv2.IMWRITE_JPEG_QUALITY, 90], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]):
            jpeg = _encode(".jpg", expected, *params)
            np.testing.assert_array_equal(decode_image(jpeg, min_side=1),
                                          cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR),
                                          err_msg=f"{path.name} as JPEG {params}")


def test_openexr_when_enabled(tmp_path):
    """OpenCV reads OpenEXR only with OPENCV_IO_ENABLE_OPENEXR set before its first use: a fresh process."""
    script = """
import numpy as np, cv2
from tritongen.processing.errors import PreprocessError
from tritongen.processing.image import decode_image

img = np.random.default_rng(0).random((40, 60, 3), dtype=np.float32)
data = cv2.imencode(".exr", img)[1].tobytes()
np.testing.assert_array_equal(decode_image(data), cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
at = data.index(b"dataWindow\\x00box2i\\x00") + len(b"dataWindow\\x00box2i\\x00") + 4
bomb = data[:at + 8] + np.array([29999, 29999], "<i4").tobytes() + data[at + 16:]
for bad, message in [(bomb, "30000x30000 pixels"), (data[:len(data) // 2], "truncated")]:
    try:
        decode_image(bad)
        raise SystemExit("accepted")
    except PreprocessError as exc:
        assert message in str(exc), str(exc)
print("ok")
"""
    env = {**os.environ, "OPENCV_IO_ENABLE_OPENEXR": "1"}
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "ok", run.stderr


def test_processing_package_stays_self_contained():
    source = Path(image.__file__).read_text(encoding="utf-8")
    imports = {line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "re", "struct", "zlib", "dataclasses", "typing", "cv2", "numpy", ".errors"}
