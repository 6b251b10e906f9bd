"""The paper's image policy: shorter side to 256, central 256x256 crop, RGB uint8 (docs/design.md `imgnet prep`).

`reference_resize` is the policy written plainly: open, convert("RGB"), resize the whole image so that
the shorter side S becomes 256 (W' = round(W*256/S), H' = round(H*256/S), LANCZOS), crop at
((W'-256)//2, (H'-256)//2). `prepare_image` computes the same pixels faster, in one pass and with no
temporary files:

- the crop and the resize are one `Image.resize(box=...)`: only the source region under the crop is
  resampled, with the reference's scale and pixel centres (equal to the reference but for a level or
  two in under 1% of the values, from the rounding of Pillow's fixed-point filter weights);
- a large JPEG is decoded at 1/2, 1/4 or 1/8 scale by libjpeg (draft mode) while the decoded shorter
  side keeps at least `DRAFT_GAP` x 256 pixels for LANCZOS to finish the job;
- greyscale is resized as one channel and replicated afterwards (identical to converting first).

At `imgnet prep --size N` the same policy runs with N for 256 (every function takes `size`); a source
image already N x N is kept as it is (no resample: its decoded pixels). The filter is LANCZOS; the
downsampled ImageNet of Chrabaszcz et al. 2017 (32x32, 64x64) used a box filter, so `--size 32/64` of
ImageNet is their dataset up to the filter.

Decoding is by content (a PNG named .JPEG is a PNG), in the raster formats of RASTER_FORMATS only; any
other format is refused before Pillow's plugin for it parses anything. EXIF orientation and ICC profiles are ignored,
as the published pixels and most ImageNet tools do. Files that cannot be decoded raise `BadImage`, and so do JPEGs
that libjpeg would pad with grey with only a warning: a scan cut short by a marker (an end-of-image marker
appended to a cut file) and a header claiming more 8x8 blocks than the file has bits (`_check_jpeg_complete`,
`_check_jpeg_room`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata
import io
import re
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFile, JpegImagePlugin

RESAMPLE = Image.Resampling.LANCZOS  # the antialiasing filter of the reference and of the fast path

# Draft mode decodes at scale 1/s only while the decoded shorter side stays >= DRAFT_GAP * size, the
# rule Pillow's own thumbnail() uses (reducing_gap 2). libjpeg's scaled IDCT keeps detail up to the new
# Nyquist limit that LANCZOS would soften, so the last resize must still reduce by about 2x: measured
# against the reference on mosaics of real photos at full resolution, the mean absolute difference
# (0-255 levels) is 0.3-1.1 with a 2x gap, 1.4-1.7 at 1.5x and 2.4-2.9 at 1x (over the 2-level tolerance).
DRAFT_GAP = 2.0
# Integer box reduction before LANCZOS when the remaining reduction is >= 2 * REDUCING_GAP (huge
# non-JPEG images, or JPEGs beyond the 1/8 draft limit): Pillow's "indistinguishable" setting.
REDUCING_GAP = 3.0

_JPEG_MAGIC = b"\xff\xd8\xff"  # SOI followed by the first marker
# A marker inside a scan's entropy-coded data: 0xFF (fill 0xFFs allowed) then neither a stuffed 0x00 nor RST0-7.
_SCAN_END = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")
# Huffman-coded frames (SOF0-3, 5-7): every 8x8 block costs at least one bit (its DC code), so a header
# claiming more blocks than 8 per byte of the file describes pixels the file cannot hold.
_HUFFMAN_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7))
# Bytes put before the marker that ends a JPEG's last scan to tell a complete scan from a cut one: after a
# complete scan libjpeg skips them unread; a cut scan decodes them as data. Two patterns, because with an
# optimised Huffman table one of them may decode to empty blocks (the grey a cut scan is padded with).
_PADS = (b"\x00" * 64, b"\xfe" * 64)
# The raster formats the toolkit reads (docs/design.md), by Pillow's plugin names (PPM covers PBM/PGM/PPM/PNM).
# Nothing else is ever opened: EPS/PostScript would hand the file to Ghostscript, and every other plugin
# is parser code the ILSVRC images never need.
RASTER_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
_READ = "JPEG, PNG, GIF, BMP, TIFF, WebP or PPM/PGM"
# the format a file name promises: content in another format is decoded by content, and listed as converted
_SUFFIX_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP",
                  ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP", ".ppm": "PPM", ".pgm": "PPM", ".pbm": "PPM",
                  ".pnm": "PPM"}
_WIDE_GREY = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # 16-bit samples (PNG, TIFF, PGM), "I" holds them in int32
_GREY = ("1", "L", "LA", "F")  # resized as one channel, replicated to RGB at the end


class BadImage(Exception):
    """The bytes are not an image this policy can decode; `reason` says why (one line, for the prep report)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Prepared(NamedTuple):
    """`prepare`'s result: the stored pixels and what they were made from (for the prep report)."""

    image: np.ndarray  # uint8 (size, size, 3) RGB
    from_format: str   # the decoded format, by content: one of RASTER_FORMATS
    from_mode: str     # the source's Pillow mode, ";16" added where 16-bit samples hide behind it ("RGB;16")
    converted: bool    # not a plain 8-bit RGB file in the format its name says: CMYK, greyscale, 16-bit, a PNG named .JPEG

    def report_entry(self, name: str) -> dict | None:
        """The prep report's `converted` entry for this image, or None when it was not converted."""
        return {"name": name, "from_format": self.from_format, "from_mode": self.from_mode} if self.converted else None


def scaled_size(width: int, height: int, size: int = 256) -> tuple[int, int]:
    """(W', H') with the shorter side `size`: (round(W*size/S), round(H*size/S)), S = min(W, H)."""
    s = min(width, height)
    return round(width * size / s), round(height * size / s)


def crop_box(width: int, height: int, size: int = 256) -> tuple[float, float, float, float]:
    """Region of the W x H source that the reference's resize-then-crop turns into the size x size output.

    The reference crops the W' x H' resized image at ((W'-size)//2, (H'-size)//2); in source pixels that
    window starts at x*W/W' and spans size*W/W' (the same scale, so LANCZOS sees the same support).
    """
    w, h = scaled_size(width, height, size)
    x, y = (w - size) // 2, (h - size) // 2
    # integer numerators: exact when the window reaches the border (x + size == w gives exactly W)
    return x * width / w, y * height / h, (x + size) * width / w, (y + size) * height / h


def draft_scale(width: int, height: int, size: int = 256, max_pixels: int | None = None) -> int:
    """JPEG decode scale divisor s in (1, 2, 4, 8) for a W x H image.

    Quality: the largest s that leaves the decoded shorter side >= DRAFT_GAP * size. Memory: when W*H is
    over `max_pixels`, s is raised to the smallest divisor whose decoded size ceil(W/s) * ceil(H/s) fits
    under it, but never so far that the decoded shorter side drops below `size`.
    """
    short = min(width, height)
    s = next((s for s in (8, 4, 2) if short / s >= DRAFT_GAP * size), 1)
    if max_pixels is not None and width * height > max_pixels:
        for d in (2, 4, 8):
            if -(-short // d) < size:
                break
            s = max(s, d)
            if -(-width // d) * -(-height // d) <= max_pixels:
                break
    return s


def prepare(data: bytes, size: int = 256, name: str | None = None) -> Prepared:
    """Encoded image bytes -> Prepared(uint8 (size, size, 3) RGB, from_format, from_mode, converted).

    `name` (the source file name) lets `converted` also flag content that is not the format the name's
    suffix says (a PNG saved as .JPEG). Raises BadImage for empty, truncated, corrupt or non-image data,
    for formats other than RASTER_FORMATS (never opened), and for images over Pillow's decompression-bomb
    limit that cannot be decoded at reduced scale (any format but baseline JPEG). The bytes are already in
    memory, so nothing here is an I/O failure: BadImage (and MemoryError) are all that leave.
    """
    try:
        return _prepare(data, size, name)
    except (BadImage, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - a decoder's OSError or ValueError on these bytes is about their content
        raise BadImage(f"cannot decode: {type(e).__name__}: {e}") from e


def _prepare(data: bytes, size: int, name: str | None) -> Prepared:
    im = _open(data)
    from_format, from_mode = im.format, _source_mode(im)
    width, height = im.size
    box = crop_box(width, height, size)
    layout = None
    if im.format == "JPEG":
        layout = _jpeg_layout(data)
        _check_jpeg_room(layout, width, height, len(data))
        box = _draft_jpeg(im, size, box)
    _load(im, width, height)
    if layout is not None:
        _check_jpeg_complete(data, im, layout, size)
    im = _to_resizable(im)
    if (width, height) == (size, size):  # already size x size: its pixels as they are, no resample
        out = im
    else:
        out = im.resize((size, size), RESAMPLE, box=box, reducing_gap=REDUCING_GAP)
    if out.mode != "RGB":
        out = out.convert("RGB")  # L -> RGB replicates the channel, exactly as converting first would
    arr = np.asarray(out)
    assert arr.shape == (size, size, 3) and arr.dtype == np.uint8, (arr.shape, arr.dtype)
    promised = _SUFFIX_FORMAT.get(Path(name).suffix.lower()) if name else None
    converted = from_mode != "RGB" or (promised is not None and promised != from_format)
    return Prepared(arr, from_format, from_mode, converted)


def prepare_image(data: bytes, size: int = 256) -> tuple[np.ndarray, str | None]:
    """Encoded image bytes -> (uint8 (size, size, 3) RGB, source mode or None when it was 8-bit RGB);
    `prepare` with the format left out. Raises BadImage as `prepare` does."""
    p = prepare(data, size)
    return p.image, None if p.from_mode == "RGB" else p.from_mode


def reference_resize(data: bytes, size: int = 256) -> np.ndarray:
    """The policy as a user would write it, with no shortcut: the baseline that tests and benchmarks compare to."""
    im = Image.open(io.BytesIO(data), formats=RASTER_FORMATS)
    if im.mode in _WIDE_GREY:
        im = _wide_grey_to_l(im)  # Pillow's convert() would clip 16-bit values at 255
    im = im.convert("RGB")
    w, h = scaled_size(*im.size, size)
    im = im.resize((w, h), RESAMPLE)
    x, y = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((x, y, x + size, y + size)))


def pillow_flavour() -> str:
    """"pillow-simd" or "pillow": the distribution whose PIL/_imaging binary is the one imported.

    Both distributions install into the same PIL folder and both may be listed as installed (matplotlib
    pulls Pillow in), so the loaded extension file is hashed and compared with each RECORD's sha256.
    """
    so = Path(Image.core.__file__).resolve()
    digest = base64.urlsafe_b64encode(hashlib.sha256(so.read_bytes()).digest()).rstrip(b"=").decode()
    installed = []
    for dist_name, flavour in (("pillow-simd", "pillow-simd"), ("Pillow", "pillow")):
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            continue
        installed.append(flavour)
        for f in dist.files or ():
            if f.name == so.name and f.hash is not None and f.hash.mode == "sha256" and f.hash.value == digest:
                if Path(dist.locate_file(f)).resolve() == so:
                    return flavour
    if len(installed) == 1:  # no hash recorded (e.g. a conda install): the only candidate
        return installed[0]
    raise RuntimeError(
        f"cannot tell which distribution provides {so}: its sha256 matches neither pillow-simd's nor "
        f"Pillow's RECORD (installed: {installed or 'neither'}); reinstall with "
        "`pip install --force-reinstall --no-deps pillow-simd`"
    )


# What pillow-simd gains over stock Pillow in `prepare` (decode, resize, crop), measured on the 100 real
# ILSVRC2012 val photographs of ../shared/data, one process on a 2-core AMD EPYC VM: 75-98 img/s with
# pillow-simd 12.1.1.post0 against 37-47 with the Pillow 12.1.1 wheel. Decoding a 256x256 JPEG record (the
# loader's --encoding jpeg) measures the same with both: libjpeg-turbo does that work in either.
SIMD_GAIN = "about 2x"


@functools.cache
def note_stock_pillow() -> str | None:
    """Say once per process, in one line on stderr, that stock Pillow (not pillow-simd) resizes here and what
    pillow-simd would gain; returns the line (None with pillow-simd, or where the build cannot be told)."""
    try:
        if pillow_flavour() != "pillow":
            return None
    except RuntimeError:
        return None
    line = (f"note: stock Pillow is in use, not pillow-simd, which decodes and resizes photographs {SIMD_GAIN} "
            "faster: `pip install --force-reinstall --no-deps pillow-simd` (after any package that pulls Pillow in)")
    print(line, file=sys.stderr)
    return line


def _open(data: bytes) -> ImageFile.ImageFile:
    """Read the header (no pixels yet). JPEGs skip Image.open's bomb check: prepare_image drafts them."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    if data[:3] == _JPEG_MAGIC:
        try:
            im = JpegImagePlugin.JpegImageFile(io.BytesIO(data))
        except MemoryError:
            raise
        except Exception as e:
            raise BadImage(f"not a decodable JPEG ({len(data)} bytes): {type(e).__name__}: {e}") from e
    else:
        try:
            with warnings.catch_warnings():
                # between MAX_IMAGE_PIXELS and twice that: decoded, as Pillow allows; above, Pillow refuses
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(data), formats=RASTER_FORMATS)
        except Image.DecompressionBombError as e:
            raise BadImage(f"too large, and only JPEG decodes at reduced scale: {e}") from e  # e names both numbers
        except MemoryError:
            raise
        except Image.UnidentifiedImageError as e:
            raise BadImage(_unidentified(data)) from e
        except Exception as e:
            raise BadImage(f"unreadable image header: {type(e).__name__}: {e}") from e
    if 0 in im.size:
        raise BadImage(f"image has a zero dimension ({im.size[0]}x{im.size[1]})")
    return im


def _unidentified(data: bytes) -> str:
    """Why Image.open (restricted to RASTER_FORMATS) found no image: the format Pillow's plugins see in the
    first 16 bytes, as Image.open looks. Only their magic-number checks run: nothing else is parsed."""
    Image.init()
    prefix = data[:16]
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        try:
            known = accept is not None and accept(prefix)
        except Exception:  # noqa: BLE001 - a check that fails on odd bytes just does not match
            known = False
        if not known:
            continue
        if fmt in RASTER_FORMATS:
            return f"{fmt} whose header does not parse ({len(data)} bytes)"
        why = " (decoding it would run Ghostscript)" if fmt == "EPS" else ""
        return (f"{'EPS/PostScript' if fmt == 'EPS' else fmt} content (by its first bytes), not a format read{why}: "
                f"expected {_READ}; refused unopened")
    return f"not an image in a format read ({_READ}; {len(data)} bytes, starting {data[:16]!r})"


def _source_mode(im: Image.Image) -> str:
    """im.mode, with ";16" where the file holds 16-bit samples that Pillow's mode does not show (a 48-bit
    RGB PNG or TIFF opens as "RGB", a 16-bit PGM as "I")."""
    mode = im.mode
    if mode.startswith("I;16") or not im.tile:
        return mode
    args = im.tile[0].args
    rawmode, extra = (args, None) if isinstance(args, str) else (args[0], args[1] if len(args) > 1 else None)
    wide = ";16" in str(rawmode) or (im.tile[0].codec_name == "ppm" and isinstance(extra, int) and extra > 255)
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, (8,))  # BitsPerSample
        wide = wide or 8 < max(bits if isinstance(bits, tuple) else (bits,)) <= 16
    return f"{mode};16" if wide else mode


def _draft_jpeg(im: JpegImagePlugin.JpegImageFile, size: int, box: tuple) -> tuple:
    """Set the JPEG's decode scale (draft mode, before loading); returns the crop box in decoded pixels.

    Pillow's bomb guard is read per call (a user's setting is respected, never changed): Pillow warns
    above MAX_IMAGE_PIXELS and refuses above twice that. A JPEG is drafted under the first where it can
    be; only what would still decode to more than the second is refused.
    """
    width, height = im.size
    limit = Image.MAX_IMAGE_PIXELS
    s = draft_scale(width, height, size, limit)
    decoded = -(-width // s) * -(-height // s)
    progressive = bool(im.info.get("progressive"))
    if limit is not None and (decoded > 2 * limit or (progressive and width * height > 2 * limit)):
        why = (  # libjpeg buffers a progressive JPEG's DCT coefficients at full size, 2 bytes per sample
            "a progressive JPEG holds all its DCT coefficients at full resolution whatever the scale"
            if progressive
            else f"even at 1/{s} scale, the smallest that keeps the shorter side >= {size}"
        )
        raise BadImage(
            f"JPEG of {width}x{height} = {width * height} pixels is over Pillow's decompression-bomb "
            f"limit of {2 * limit} pixels and cannot be decoded safely: {why}"
        )
    if s == 1:
        return box
    im.draft(im.mode, (width // s, height // s))
    assert im.size == (-(-width // s), -(-height // s)), (im.size, width, height, s)
    return tuple(v / s for v in box)  # decoded pixel i covers source pixels [i*s, (i+1)*s)


class _JpegLayout(NamedTuple):
    """What the marker segments of a JPEG say, read without decoding anything."""

    sof: int | None        # the frame marker (0xC0 baseline, 0xC2 progressive, ...), None when absent
    scans: int             # start-of-scan segments found
    scan_end: int | None   # offset of the marker that ends the last scan (normally EOI); None: none follows


def _jpeg_layout(data: bytes) -> _JpegLayout:
    """Walk a JPEG's marker segments from SOI: the frame type, the number of scans, where the last ends.
    Malformed structure is left to the decoder (its errors name it): the walk just stops."""
    pos, sof, scans, scan_end, n = 2, None, 0, None, len(data)
    while pos + 4 <= n and data[pos] == 0xFF:
        while pos + 2 < n and data[pos + 1] == 0xFF:  # fill bytes before a marker
            pos += 1
        marker = data[pos + 1]
        if marker == 0xD9:  # EOI
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            sof = marker
        elif marker == 0xDA:  # SOS: its entropy-coded data runs to the next marker
            scans += 1
            m = _SCAN_END.search(data, pos)
            if m is None:
                return _JpegLayout(sof, scans, None)
            pos = scan_end = m.start()
    return _JpegLayout(sof, scans, scan_end)


def _check_jpeg_room(layout: _JpegLayout, width: int, height: int, nbytes: int) -> None:
    """Refuse a Huffman-coded JPEG whose header claims more 8x8 blocks than its bytes have bits (libjpeg
    would decode the few blocks present and pad all the others with grey)."""
    blocks = -(-width // 8) * -(-height // 8)
    if layout.sof in _HUFFMAN_SOF and blocks > 8 * nbytes:
        raise BadImage(
            f"JPEG header claims {width}x{height} pixels ({blocks} blocks of 8x8), more than its {nbytes} bytes "
            f"can hold (at least one bit per block: at most {8 * nbytes} blocks); its image data is missing"
        )


def _check_jpeg_complete(data: bytes, im: Image.Image, layout: _JpegLayout, size: int) -> None:
    """Refuse a JPEG whose last scan is cut short by a marker (an end-of-image marker appended to a cut file):
    libjpeg only warns ("premature end of data segment") and pads the missing blocks with mid grey.

    Checked where a cut is possible to see: a one-scan JPEG whose last decoded pixel is the padding's grey,
    and any multi-scan (progressive) JPEG, whose cut scans may only blur it. Decoded again with bytes put
    before the marker that ends the last scan, a complete JPEG gives the same pixels (libjpeg skips bytes
    after a complete scan); a cut one decodes them as image data, and its pixels change.
    """
    if layout.scan_end is None or (layout.scans == 1 and not _padding_grey(im)):
        return
    pixels, end = im.tobytes(), layout.scan_end
    for pad in _PADS:
        try:
            same = _decode_jpeg(data[:end] + pad + data[end:], size).tobytes() == pixels
        except BadImage:
            same = False
        if not same:
            raise BadImage(
                f"truncated JPEG: its image data ends early, at byte {end} of {len(data)}, cut short by a "
                f"marker (libjpeg would pad the missing part with grey)"
            )


def _padding_grey(im: Image.Image) -> bool:
    """Whether the last decoded pixel is libjpeg's padding for missing blocks: all-zero coefficients, 128 in
    every channel (127 where Pillow inverts Adobe CMYK)."""
    px = im.getpixel((im.width - 1, im.height - 1))
    return all(abs(v - 128) <= 1 for v in (px if isinstance(px, tuple) else (px,)))


def _decode_jpeg(data: bytes, size: int) -> Image.Image:
    """A JPEG decoded as `prepare` decodes it (the same draft scale), for `_check_jpeg_complete`."""
    im = JpegImagePlugin.JpegImageFile(io.BytesIO(data))
    _draft_jpeg(im, size, (0, 0, *im.size))
    _load(im, *im.size)
    return im


def _load(im: ImageFile.ImageFile, width: int, height: int) -> None:
    """Decode the pixels; a truncated file is an error, never an image padded with grey."""
    try:
        with _strict_truncation():
            im.load()
    except MemoryError:
        raise
    except Exception as e:
        raise BadImage(f"cannot decode {im.format} {width}x{height} data: {type(e).__name__}: {e}") from e


@contextmanager
def _strict_truncation():
    """ImageFile.LOAD_TRUNCATED_IMAGES off while loading, restored after.

    Touched only when something in this process turned it on; process-global, as prep's workers are processes.
    """
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        yield
        return
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = True


def _to_resizable(im: Image.Image) -> Image.Image:
    """Any mode -> "RGB" or "L" (greyscale, replicated to RGB after the resize)."""
    if im.mode in ("RGB", "L"):
        return im
    if im.mode in _WIDE_GREY:
        return _wide_grey_to_l(im)
    try:
        # alpha is dropped as convert("RGB") drops it (LA, RGBA, PA); F clips to 0-255; 1 gives 0 or 255
        return im.convert("L" if im.mode in _GREY else "RGB")
    except ValueError as e:
        raise BadImage(f"cannot convert image mode {im.mode} to RGB: {e}") from e


def _wide_grey_to_l(im: Image.Image) -> Image.Image:
    """16-bit greyscale -> 8 bits by v / 257 rounded (65535 -> 255), not clipped at 255 as convert() does."""
    a = np.clip(np.asarray(im), 0, 65535).astype(np.uint32)  # "I" (int32) holds 16-bit samples
    return Image.fromarray(((a + 128) // 257).astype(np.uint8))
