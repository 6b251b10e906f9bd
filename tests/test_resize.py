"""resize.py: the fast path against the plain reference, crop geometry, colour modes, bad input, bombs."""

import hashlib
import io
import json
import struct
import subprocess
import sys
import warnings
import zlib
from base64 import urlsafe_b64encode
from importlib.metadata import FileHash, PackagePath
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFile, JpegImagePlugin

from imagenet_prep import resize
from imagenet_prep.resize import (
    BadImage,
    draft_scale,
    pillow_flavour,
    prepare_image,
    reference_resize,
    scaled_size,
)

TOL = 2.0  # DESIGN.md: stored pixels within a mean absolute difference of 2 levels of the reference


def _encode(im: Image.Image, fmt="JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """Photo-like RGB: smooth colour field, sharp-edged shapes at many scales, fine texture."""
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(40):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(max(2, w // 200), max(3, w // 6)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x - r, y - r, x + r, y + r), fill=colour)
    noise = Image.fromarray(rng.integers(104, 153, (h, w), dtype=np.uint8)).convert("RGB")  # texture around 128
    return ImageChops.add(im, noise, scale=1.0, offset=-128)


@pytest.fixture
def draft_scales(monkeypatch):
    """Records the scale divisor of every JPEG draft-mode decode that prepare_image sets up."""
    seen = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        seen.append(self.decoderconfig[0] if result else 1)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return seen


# ---- shape, geometry, agreement with the reference ----


@pytest.mark.parametrize(
    "w, h",
    [(500, 375), (375, 500), (300, 300), (40, 30), (3, 700), (2200, 1400), (1500, 2600)],
    ids=["landscape", "portrait", "square", "tiny-upscaled", "sliver", "huge-landscape", "huge-portrait"],
)
def test_output_shape_dtype_and_reference(w, h):
    data = _encode(_photo(w, h, seed=w), quality=90)
    img, from_mode = prepare_image(data)
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8 and from_mode is None
    assert _mad(img, reference_resize(data)) < TOL


def test_real_val_images_match_reference(shared_data):
    files = sorted((shared_data / "images" / "val_original").glob("*.JPEG"))
    assert len(files) == 100
    mads, modes = [], {}
    for f in files:
        data = f.read_bytes()
        img, from_mode = prepare_image(data)
        ref = reference_resize(data)
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8
        # none of these is big enough for draft mode: the fused crop+resize alone, exact up to the
        # rounding of the fixed-point filter weights (a level or two in under 1% of the values)
        diff = np.abs(img.astype(int) - ref)
        assert diff.max() <= 2 and (diff > 0).mean() < 0.01, f.name
        mads.append(_mad(img, ref))
        modes[f.name] = from_mode
    assert max(mads) < TOL
    assert modes.pop("ILSVRC2012_val_00000034.JPEG") == "L"
    assert set(modes.values()) == {None}


def _sawtooth(w: int, h: int, slope: float, axis: int, fmt: str, **kw) -> bytes:
    """Greyscale ramp value = slope * k mod 256 along `axis` (k = pixel index), constant across it."""
    line = (slope * np.arange(w if axis == 0 else h)) % 256
    a = np.broadcast_to(line[None, :] if axis == 0 else line[:, None], (h, w)).astype(np.uint8)
    return _encode(Image.fromarray(a), fmt, **kw)


def _expected_profile(w: int, h: int, slope: float, axis: int, shift: int = 0):
    """The policy worked by hand: output pixel j of the crop at ((n'-256)//2 + shift) samples the source at
    (x + j + 0.5) * n / n'; a ramp is reproduced exactly by any normalised symmetric filter."""
    n = (w, h)[axis]
    n2 = scaled_size(w, h)[axis]
    x = (n2 - 256) // 2 + shift
    p = (x + np.arange(256) + 0.5) * n / n2 - 0.5  # source pixel-index coordinate
    period = 256 / slope
    to_jump = np.abs((p + period / 2) % period - period / 2)
    return (slope * p) % 256, to_jump > 4 * n / n2 + 2  # skip LANCZOS's reach (3 output px) around jumps


@pytest.mark.parametrize(
    "w, h, slope, axis, fmt, drafted",
    [
        (702, 300, 2.0, 0, "PNG", 1),  # W' = round(599.04) = 599, crop x = 343 // 2 = 171
        (300, 701, 2.0, 1, "PNG", 1),  # H' = round(598.19) = 598, crop y = 171
        (2730, 2048, 0.5, 0, "JPEG", 4),  # decoded at 1/4: the box is scaled with it
        (2048, 4500, 0.5, 1, "JPEG", 4),
    ],
)
def test_crop_geometry_matches_hand_computation(w, h, slope, axis, fmt, drafted, draft_scales):
    data = _sawtooth(w, h, slope, axis, fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    expected, usable = _expected_profile(w, h, slope, axis)
    assert usable.sum() > 200
    for img in (prepare_image(data)[0], reference_resize(data)):
        assert (img[..., 0] == img[..., 2]).all()
        profile = (img[128, :, 0] if axis == 0 else img[:, 128, 0]).astype(float)
        assert np.abs(profile - expected)[usable].max() <= 1.0
        for shift in (-1, 1):  # a crop one pixel off is visible: the check can fail
            wrong, _ = _expected_profile(w, h, slope, axis, shift)
            assert np.abs(profile - wrong)[usable].max() > 1.5
    assert draft_scales == ([drafted] if drafted > 1 else [])


@pytest.mark.parametrize(
    "w, h, scale, mode",
    [(1366, 1024, 2, "RGB"), (1024, 1500, 2, "RGB"), (2730, 2048, 4, "RGB"), (4096, 4100, 8, "RGB"),
     (1366, 1024, 2, "L"), (1024, 1366, 2, "CMYK")],
)
def test_draft_mode_within_tolerance_on_large_jpegs(w, h, scale, mode, draft_scales):
    data = _encode(_photo(w, h, seed=h).convert(mode), quality=90)
    img, from_mode = prepare_image(data)
    assert draft_scales == [scale] and from_mode == (None if mode == "RGB" else mode)
    assert _mad(img, reference_resize(data)) < TOL


def test_draft_mode_within_tolerance_on_dense_real_mosaic(shared_data, draft_scales):
    """Real photos tiled at full resolution (denser detail than a big camera photo): the hard case for draft."""
    tiles = []
    for f in sorted((shared_data / "images" / "val_original").glob("*.JPEG"))[:40]:
        a = np.asarray(Image.open(f).convert("RGB"))
        if min(a.shape[:2]) >= 333:
            tiles.append(a[:333, :333])
    rows = [np.concatenate(tiles[r * 4 : r * 4 + 4], axis=1) for r in range(4)]  # 1332 x 1332
    data = _encode(Image.fromarray(np.concatenate(rows, axis=0)), quality=90)
    img, _ = prepare_image(data)
    assert draft_scales == [2]
    assert _mad(img, reference_resize(data)) < TOL


def test_draft_scale_keeps_the_gap():
    assert draft_scale(1000, 750) == 1  # 375 decoded would leave LANCZOS under 2x: measured too far off
    assert draft_scale(1024, 1366) == 2
    assert draft_scale(2047, 3000) == 2
    assert draft_scale(4096, 5000) == 8
    assert draft_scale(15000, 12000) == 8
    assert draft_scale(1600, 1100, max_pixels=100_000) == 4  # memory bound beats the quality rule
    assert draft_scale(4000, 260, max_pixels=100_000) == 1  # no scale keeps the shorter side >= 256


# ---- colour modes, decoding by content ----


def _flat_wide(value: int, dtype, fmt: str) -> bytes:
    return _encode(Image.fromarray(np.full((300, 400), value, dtype=dtype)), fmt)


# v / 257 rounded; Pillow's convert() would clip everything above 255 to white
@pytest.mark.parametrize("value, expected", [(0, 0), (1000, 4), (32896, 128), (65535, 255)])
def test_16_bit_greyscale_is_scaled_not_clipped(value, expected):
    for dtype, fmt, mode in ((np.uint16, "PNG", "I;16"), (">u2", "TIFF", "I;16B"), (np.int32, "TIFF", "I")):
        data = _flat_wide(value, dtype, fmt)
        img, from_mode = prepare_image(data)
        assert from_mode == mode
        assert (img == expected).all()
        assert (reference_resize(data) == expected).all()


def test_16_bit_gradient_matches_reference():
    ramp = (np.arange(400 * 300, dtype=np.uint32).reshape(300, 400) * 7 % 65536).astype(np.uint16)
    data = _encode(Image.fromarray(ramp), "PNG")
    img, from_mode = prepare_image(data)
    assert from_mode == "I;16" and _mad(img, reference_resize(data)) < TOL
    assert img.max() > 200  # not clipped to 255 everywhere, not crushed to 0


def _mode_cases():
    photo = _photo(400, 300, seed=7)
    rgba = photo.copy()
    rgba.putalpha(Image.linear_gradient("L").resize((400, 300)))
    return {
        "CMYK JPEG": (_encode(photo.convert("CMYK"), quality=95), "CMYK"),
        "PNG": (_encode(photo, "PNG"), None),
        "palette PNG": (_encode(photo.convert("P"), "PNG"), "P"),
        "palette GIF": (_encode(photo.convert("P"), "GIF"), "P"),
        "RGBA PNG": (_encode(rgba, "PNG"), "RGBA"),
        "LA PNG": (_encode(rgba.convert("LA"), "PNG"), "LA"),
        "1-bit PNG": (_encode(photo.convert("1"), "PNG"), "1"),
        "F TIFF": (_encode(photo.convert("F"), "TIFF"), "F"),
        "greyscale JPEG": (_encode(photo.convert("L"), quality=90), "L"),
    }


@pytest.mark.parametrize("name", list(_mode_cases()))
def test_every_mode_converts_like_the_reference(name, tmp_path):
    data, mode = _mode_cases()[name]
    path = tmp_path / "n02105855_2933.JPEG"  # the name says JPEG whatever the content: decoded by content
    path.write_bytes(data)
    img, from_mode = prepare_image(path.read_bytes())
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8
    assert from_mode == mode
    assert _mad(img, reference_resize(data)) < TOL
    if mode in ("L", "LA", "1", "F"):
        assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()


@pytest.mark.parametrize(
    "mode, value, rgb",
    [
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("CMYK", (0, 0, 0, 255), (0, 0, 0)),
        ("RGBA", (10, 200, 30, 0), (10, 200, 30)),  # alpha dropped as convert("RGB") does, not composited
        ("LA", (77, 10), (77, 77, 77)),
        ("1", 1, (255, 255, 255)),
    ],
)
def test_flat_colours_convert_exactly(mode, value, rgb):
    flat = Image.new(mode, (300, 200), value)
    img, from_mode = prepare_image(_encode(flat, "JPEG", quality=100) if mode == "CMYK" else _encode(flat, "PNG"))
    assert from_mode == mode
    assert np.abs(img.astype(int) - np.array(rgb)).max() <= 1


def test_palette_colours_survive():
    im = Image.new("P", (300, 200))
    im.putpalette([0, 0, 0, 200, 30, 40] + [0, 0, 0] * 254)
    ImageDraw.Draw(im).rectangle((0, 0, 299, 199), fill=1)
    img, from_mode = prepare_image(_encode(im, "PNG"))
    assert from_mode == "P" and (img == np.array([200, 30, 40], np.uint8)).all()


def test_real_greyscale_val_image(shared_data):
    data = (shared_data / "images" / "val_original" / "ILSVRC2012_val_00000034.JPEG").read_bytes()
    img, from_mode = prepare_image(data)
    assert from_mode == "L"
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    assert _mad(img, reference_resize(data)) < TOL


def test_exif_orientation_is_ignored():
    photo = _photo(400, 300, seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    plain, rotated = _encode(photo, quality=95), _encode(photo, quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(rotated)).getexif()[0x0112] == 6
    assert (prepare_image(plain)[0] == prepare_image(rotated)[0]).all()


# ---- undecodable input ----


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _zero_width_png() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 0, 5, 8, 0, 0, 0, 0)
    body = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 5)) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _zero_width_jpeg() -> bytes:
    data = bytearray(_encode(Image.new("RGB", (16, 16), (10, 20, 30))))
    sof = data.find(b"\xff\xc0")
    data[sof + 7 : sof + 9] = b"\0\0"  # SOF0: length(2) precision(1) height(2) width(2)
    return bytes(data)


def _bad_inputs():
    jpeg = _encode(_photo(500, 375, seed=1), quality=90)
    png = _encode(_photo(300, 200, seed=2), "PNG")
    return {
        "zero bytes": (b"", "empty"),
        "truncated JPEG": (jpeg[: len(jpeg) // 2], "truncated"),
        "JPEG missing its last bytes": (jpeg[:-100], "truncated"),
        "truncated PNG": (png[: len(png) // 2], "PNG"),
        "JPEG header only": (jpeg[:300], "JPEG"),
        "HTML page": (b"<html><body>404 Not Found</body></html>", "not an image"),
        "random bytes": (np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "not an image"),
        "zero-width PNG": (_zero_width_png(), "PNG whose header does not parse"),
        "zero-width JPEG": (_zero_width_jpeg(), "JPEG"),
    }


@pytest.mark.parametrize("name", list(_bad_inputs()))
def test_undecodable_input_raises_bad_image(name):
    data, word = _bad_inputs()[name]
    with pytest.raises(BadImage) as info:
        prepare_image(data)
    reason = info.value.reason
    assert reason == str(info.value) and "\n" not in reason
    assert word in reason, reason
    assert not isinstance(info.value, (OSError, ValueError))  # callers catch BadImage alone


def test_truncated_jpeg_is_an_error_even_if_pillow_was_told_to_accept_it(monkeypatch):
    data = _encode(_photo(500, 375, seed=4), quality=90)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # some other library's choice
    with pytest.raises(BadImage, match="truncated"):
        prepare_image(data[: len(data) * 3 // 4])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for that library
    assert prepare_image(data)[0].shape == (256, 256, 3)


# ---- decompression bombs ----


def test_real_jpeg_bomb_is_drafted_within_bounded_memory(tmp_path, draft_scales):
    """15000 x 12000 = 180 MP, over Pillow's refusal limit (~179 MP): flat grey encodes to 2 MB."""
    pytest.importorskip("resource")  # POSIX: peak memory of the probe process
    data = _encode(Image.new("L", (15000, 12000), 128), quality=50)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))  # what the reference, or a plain loop, meets
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        img, from_mode = prepare_image(data)
    # ending in mid grey, it is decoded again (at the same scale) to tell it from a cut one
    assert set(draft_scales) == {8} and from_mode == "L" and (img == 128).all()
    assert Image.MAX_IMAGE_PIXELS == limit
    # peak memory of a fresh process decoding it: a full decode needs 180 MB for the pixels alone
    path = tmp_path / "bomb.JPEG"
    path.write_bytes(data)
    probe = (
        "import json, resource, sys; from imagenet_prep.resize import prepare_image; "
        "data = open(sys.argv[1], 'rb').read(); before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        "prepare_image(data); "
        "print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024))"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) < 40  # MiB (ru_maxrss is in KiB on Linux); decoded at 1/8: 1875 x 1500


def test_jpeg_over_lowered_limit_decodes_at_the_scale_that_fits(monkeypatch, draft_scales):
    data = _encode(_photo(400, 275, seed=5).resize((1600, 1100)), quality=90)  # smooth: decoded at 1.07x
    ref = reference_resize(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # 1.76 MP counts as a bomb now
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img, _ = prepare_image(data)
    assert draft_scales == [4]  # 400 x 275 decoded (the quality rule alone gives 1/2)
    assert Image.MAX_IMAGE_PIXELS == 100_000
    assert _mad(img, ref) < TOL


def test_jpeg_bombs_that_cannot_be_drafted_safely_are_rejected(monkeypatch):
    photo = _photo(1600, 1100, seed=6)
    progressive = _encode(photo, quality=90, progressive=True)
    sliver = _encode(Image.new("RGB", (4000, 260), (5, 6, 7)), quality=90)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    with pytest.raises(BadImage, match="progressive") as info:
        prepare_image(progressive)
    assert "1760000 pixels" in info.value.reason and "200000" in info.value.reason
    with pytest.raises(BadImage, match="1040000 pixels") as info:  # no draft keeps its short side >= 256
        prepare_image(sliver)
    assert "200000" in info.value.reason


def test_non_jpeg_bomb_is_rejected_and_a_large_one_under_the_limit_is_quiet(monkeypatch):
    over, under = _encode(_photo(300, 200), "PNG"), _encode(_photo(150, 100), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # Pillow refuses above 20,000, warns above 10,000
    with pytest.raises(BadImage) as info:
        prepare_image(over)
    assert "60000 pixels" in info.value.reason and "20000" in info.value.reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img, _ = prepare_image(under)  # 15,000 pixels: decoded, as Pillow allows, with no warning
    assert img.shape == (256, 256, 3)
    assert Image.MAX_IMAGE_PIXELS == 10_000


# ---- which PIL ----


def test_pillow_flavour_is_simd():
    assert pillow_flavour() == "pillow-simd"  # scripts/setup.sh installs it last, over matplotlib's Pillow


class _FakeDist:
    def __init__(self, root: Path, rel: str, content: bytes):
        path = PackagePath(rel)
        path.hash = FileHash("sha256=" + urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode())
        self.files, self.root = [path], root

    def locate_file(self, path):
        return self.root / path


def test_pillow_flavour_follows_the_file_on_disk(monkeypatch, tmp_path):
    """Both distributions listed as installed; only the RECORD hash of the binary in place decides."""
    name = Path(Image.core.__file__).name
    so = tmp_path / "PIL" / name
    so.parent.mkdir()
    dists = {
        "pillow-simd": _FakeDist(tmp_path, f"PIL/{name}", b"simd"),
        "Pillow": _FakeDist(tmp_path, f"PIL/{name}", b"stock"),
    }
    monkeypatch.setattr(Image.core, "__file__", str(so))
    monkeypatch.setattr(resize.importlib.metadata, "distribution", lambda n: dists[n])
    so.write_bytes(b"simd")
    assert pillow_flavour() == "pillow-simd"
    so.write_bytes(b"stock")  # `pip install pillow` after pillow-simd overwrote the binary
    assert pillow_flavour() == "pillow"
    so.write_bytes(b"rebuilt")
    with pytest.raises(RuntimeError, match="neither"):
        pillow_flavour()


# ----------------------------------------------------------------- formats: only the raster formats read
def _png16_rgb(w: int, h: int, value: int) -> bytes:
    """A 48-bit RGB PNG (Pillow opens it as 8-bit "RGB", hiding the depth)."""
    rows = b"".join(b"\0" + np.full((w, 3), value, ">u2").tobytes() for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))


@pytest.mark.parametrize("fmt, save", [("JPEG", "JPEG"), ("PNG", "PNG"), ("GIF", "GIF"), ("BMP", "BMP"),
                                       ("TIFF", "TIFF"), ("WEBP", "WEBP"), ("PPM", "PPM")])
def test_every_raster_format_read_is_decoded(fmt, save):
    p = resize.prepare(_encode(_photo(300, 260, seed=7), save), name=f"img.{save.lower()}")
    assert p.image.shape == (256, 256, 3) and p.from_format == fmt
    assert p.converted == (fmt == "GIF")  # GIF is a palette image: converted from mode P
    assert resize.prepare(_encode(Image.new("L", (300, 260), 77), "PPM")).from_mode == "L"  # a PGM


def _eps() -> bytes:
    return _encode(Image.new("RGB", (64, 64), (200, 10, 10)), "EPS")


def _dos_eps() -> bytes:
    """EPS with the binary DOS header (C5 D0 D3 C6) in front of the PostScript."""
    ps = _eps()
    return struct.pack("<4sIIIIIIH", b"\xc5\xd0\xd3\xc6", 30, len(ps), 0, 0, 0, 0, 0xFFFF) + ps


@pytest.mark.parametrize("make", [_eps, _dos_eps], ids=["eps", "dos-eps"])
def test_eps_is_refused_unopened(make, monkeypatch):
    from PIL import EpsImagePlugin

    def never(*a, **kw):
        raise AssertionError("the EPS plugin was run")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", never)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", never)
    for fn in (resize.prepare, prepare_image):
        with pytest.raises(BadImage, match=r"EPS/PostScript content .*, not a format read \(decoding it would run Ghostscript\)"):
            fn(make())
    with pytest.raises(Image.UnidentifiedImageError):  # the plain baseline refuses it too
        reference_resize(make())


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "SGI", "IM", "TGA"])
def test_other_pillow_formats_are_refused_with_a_reason(fmt):
    data = _encode(Image.new("RGB", (32, 32), (1, 2, 3)), fmt)
    with pytest.raises(BadImage) as e:
        resize.prepare(data)
    reason = e.value.reason
    assert "\n" not in reason and "JPEG, PNG, GIF, BMP, TIFF, WebP or PPM/PGM" in reason
    # named where Pillow's magic-number check knows it; IM and TGA have none (TGA's first bytes look like CUR)
    assert f"{fmt} content" in reason if fmt in ("ICO", "PCX", "SGI") else "content" in reason or "not an image" in reason


def test_png_saved_as_jpeg_is_decoded_and_reported_as_converted():
    png = _encode(_photo(320, 240, seed=8), "PNG")
    p = resize.prepare(png, name="n01440764_10026.JPEG")
    assert (p.from_format, p.from_mode, p.converted) == ("PNG", "RGB", True)
    assert p.report_entry("n01440764_10026.JPEG") == {"name": "n01440764_10026.JPEG", "from_format": "PNG",
                                                      "from_mode": "RGB"}
    assert _mad(p.image, reference_resize(png)) < TOL
    assert not resize.prepare(png, name="a.png").converted  # a PNG named .png is what it says
    jpeg = resize.prepare(_encode(_photo(320, 240, seed=8)), name="n01440764_10026.JPEG")
    assert (jpeg.from_format, jpeg.from_mode, jpeg.converted) == ("JPEG", "RGB", False)
    assert jpeg.report_entry("x.JPEG") is None


@pytest.mark.parametrize("data, fmt, mode", [
    (_png16_rgb(300, 280, 40000), "PNG", "RGB;16"),
    (_encode(Image.fromarray(np.full((280, 300), 40000, np.uint16)), "PNG"), "PNG", "I;16"),
    (b"P6 300 280 65535\n" + np.full((280, 300, 3), 40000, ">u2").tobytes(), "PPM", "RGB;16"),
    (b"P5 300 280 65535\n" + np.full((280, 300), 40000, ">u2").tobytes(), "PPM", "I;16"),
], ids=["png-rgb48", "png-grey16", "ppm-rgb48", "pgm-grey16"])
def test_16_bit_images_report_their_depth_and_format(data, fmt, mode):
    p = resize.prepare(data, name="x.JPEG")
    assert (p.from_format, p.from_mode, p.converted) == (fmt, mode, True)
    assert p.image.shape == (256, 256, 3) and abs(int(p.image.mean()) - 40000 // 257) <= 1  # not clipped
    assert prepare_image(data)[1] == mode  # prep's current report plumbing lists it under converted too


def test_cmyk_jpeg_reports_its_mode():
    p = resize.prepare(_encode(Image.new("CMYK", (300, 260), (0, 255, 255, 0))), name="x.JPEG")
    assert (p.from_format, p.from_mode, p.converted) == ("JPEG", "CMYK", True)


def test_only_bad_image_leaves_prepare(monkeypatch):
    """A decoder error on bytes in memory is about their content, never an I/O failure: callers can tell
    the two apart by type (BadImage: reject the image; OSError from reading the file: stop the run)."""
    def eio(im):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(resize, "_to_resizable", eio)
    with pytest.raises(BadImage, match="cannot decode: OSError"):
        resize.prepare(_encode(_photo(300, 260)))
