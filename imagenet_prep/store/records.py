"""What one packed record is, whatever format holds it: the image codecs, the stored form of a name, the
checksums, and the checks made on a split's metadata before it is read.

A record is an image (raw: N*N*3 bytes of (N, N, 3) uint8 RGB, N the split's `size`, 256 unless `imgnet prep
--size` said otherwise: 196,608 bytes; jpeg: a JPEG file), an int32 label and
the source file name's bytes. Names are stored as the bytes they have on the file system (UTF-8; the bytes
that are not UTF-8, which os.listdir and tarfile carry as surrogate escapes, go back to themselves), so any
name a file system allows reads back unchanged, newlines included; a name that cannot (a NUL, a lone
surrogate) is rejected by name. The names of a split are kept joined by NUL.

Checksums (format version 2): each record carries the zlib.crc32 of its stored image bytes, its int32 label
and its name bytes, computed as the record is committed; `index_crc32` in the metadata covers the label
array and the joined names. CRC-32 rather than a cryptographic hash: the threat is bit rot and short copies,
not an attacker; it detects every single-bit error and every burst of up to 32 bits, misses other damage with
odds of 2^-32 per record, and runs at about 2.7 GB/s (blake2b-64: about 1 GB/s), so `imgnet verify` reads at
disk speed. Version 1 (no checksums, newline-joined UTF-8 names) is still read.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np

from imagenet_prep.atomic import parse_json
from imagenet_prep.errors import ImgnetError

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no checksums, names newline-joined UTF-8
CHECKSUM = "crc32"
MAX_NAME_BYTES = 4096  # PATH_MAX: no file system path is longer
MAX_META_BYTES = 256 << 20  # the metadata holds the prep report (a name and reason per rejected image)
SIZE = 256  # the default side of a stored image (the paper's); a split's own is meta["size"] (meta_size)
IMAGE_SHAPE = (SIZE, SIZE, 3)
RAW_BYTES = SIZE * SIZE * 3  # 196,608
ENCODINGS = ("raw", "jpeg")
MIN_SIZE, MAX_SIZE = 1, 4096  # --size range: 4096 x 4096 x 3 = 48 MiB a raw record


def image_shape(size: int = SIZE) -> tuple[int, int, int]:
    """The shape of a stored image of side `size`: (size, size, 3)."""
    return (size, size, 3)


def raw_bytes(size: int = SIZE) -> int:
    """Bytes of a raw record of side `size` (196,608 at 256)."""
    return size * size * 3


def meta_size(meta: dict) -> int:
    """The side of a split's images from its metadata: "size", else its image_shape, else 256 (splits packed
    before sizes were recorded)."""
    size = meta.get("size")
    if size is None:
        shape = meta.get("image_shape")
        size = shape[0] if isinstance(shape, list) and shape else SIZE
    return size


# ------------------------------------------------------------------------------------ encoding
def encode_image(img: np.ndarray, encoding: str = "raw", quality: int = 90) -> bytes:
    """(N, N, 3) uint8 RGB -> stored bytes."""
    assert img.ndim == 3 and img.shape[0] == img.shape[1] and img.shape[2] == 3 and img.dtype == np.uint8, \
        (img.shape, img.dtype)
    if encoding == "raw":
        return np.ascontiguousarray(img).tobytes()
    if encoding == "jpeg":
        from PIL import Image

        buf = io.BytesIO()
        # 4:4:4 chroma keeps colour edges; at 256x256 the size cost is small
        Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=quality, subsampling=0)
        return buf.getvalue()
    raise ImgnetError(f"unknown encoding {encoding!r}; expected 'raw' or 'jpeg'")


def decode_image(buf, encoding: str, out: np.ndarray | None = None, size: int = SIZE) -> np.ndarray:
    """Stored bytes -> (size, size, 3) uint8 RGB, written into `out` when given."""
    if encoding == "raw":
        arr = np.frombuffer(buf, dtype=np.uint8).reshape(image_shape(size))
    else:
        from PIL import Image

        with Image.open(io.BytesIO(buf), formats=["JPEG"]) as im:  # what encode_image writes, and nothing else
            arr = np.array(im.convert("RGB") if im.mode != "RGB" else im)  # writable, like a raw record
    if out is None:
        return arr.copy() if encoding == "raw" else arr
    np.copyto(out, arr)
    return out


def estimate_bytes_per_image(encoding: str, quality: int = 90, size: int = SIZE) -> int:
    """Upper-end estimate of one stored record of side `size`, for the free-disk check before a run."""
    if encoding == "raw":
        if raw_bytes(size) + 16 <= 2000:  # LMDB keeps a value this small in the leaf page itself
            return raw_bytes(size) + 16 + 256
        return -(-(raw_bytes(size) + 16) // 4096) * 4096 + 256  # whole 4 KB overflow pages (49 at 256)
    # measured on ImageNet-like photos at 256x256, 4:4:4: about 25 KB at quality 90; keep a margin; the bytes
    # grow with the pixels (a JPEG also has a few hundred bytes of headers)
    return max(int((8_000 + 40_000 * (quality / 100) ** 3) * size * size / (SIZE * SIZE)), 1024) + 256


# ------------------------------------------------------------------------- names and checksums
def name_bytes(name: str) -> bytes:
    """The stored form of a source file name: its bytes on the file system. ValueError with the reason when
    the name cannot be stored and read back unchanged."""
    if not isinstance(name, str):
        raise ValueError(f"the name is a {type(name).__name__}, expected a str")
    if "\0" in name:
        raise ValueError("it contains a NUL character, which no file system allows in a name")
    try:
        data = name.encode("utf-8", "surrogateescape")  # U+DC80..U+DCFF: a byte that was not UTF-8
    except UnicodeEncodeError as e:
        raise ValueError(f"it contains the lone surrogate U+{ord(name[e.start]):04X}, which stands for no "
                         "byte of a file name") from None
    if data.decode("utf-8", "surrogateescape") != name:
        raise ValueError("its escaped bytes form UTF-8 text, so it would read back as another name")
    if len(data) > MAX_NAME_BYTES:
        raise ValueError(f"it is {len(data):,} bytes long; expected at most {MAX_NAME_BYTES} (PATH_MAX)")
    return data


def join_names(names: list[bytes]) -> bytes:
    """The stored names of a split (format version 2): their bytes joined by NUL."""
    return b"\0".join(names)


def split_names(blob: bytes, n: int) -> list[str]:
    """join_names' blob of `n` names -> the names as str (undecodable bytes as surrogate escapes)."""
    # NUL never occurs inside a UTF-8 sequence, so decoding the whole blob splits exactly at the names
    return blob.decode("utf-8", "surrogateescape").split("\0") if n else []


def split_names_v1(blob: bytes, n: int) -> list[str]:
    """The names of a format version 1 split: newline-joined UTF-8."""
    return blob.decode("utf-8", "surrogateescape").split("\n") if n else []


def record_crc(data, label: int, name: bytes) -> int:
    """CRC-32 of one record: its stored image bytes, its label as int32 little endian, its name bytes."""
    return zlib.crc32(name, zlib.crc32(int(label).to_bytes(4, "little", signed=True), zlib.crc32(data)))


def index_crc(labels: np.ndarray, names_blob: bytes) -> int:
    """CRC-32 of a split's index: its labels as int32 little endian, then its joined names (`index_crc32`)."""
    return zlib.crc32(names_blob, zlib.crc32(np.ascontiguousarray(labels, dtype="<i4").tobytes()))


def pack_rec(data, label: int, name: bytes) -> bytes:
    """The per-record entry beside the image: int32 label + uint32 crc32 (little endian) + the name bytes."""
    lab = int(label).to_bytes(4, "little", signed=True)
    return lab + record_crc(data, label, name).to_bytes(4, "little") + name


def unpack_rec(rec) -> tuple[int, bytes, int]:
    """pack_rec's entry -> (label, name bytes, crc32)."""
    rec = bytes(rec)
    return int.from_bytes(rec[:4], "little", signed=True), rec[8:], int.from_bytes(rec[4:8], "little")


# ------------------------------------------------------------------------------ metadata checks
def parse_meta(raw, path) -> dict:
    """A split's metadata (JSON text) as a dict; ImgnetError naming `path` for anything else."""
    if not isinstance(raw, (str, bytes)):
        raise ImgnetError(f"the metadata of {path} is a {type(raw).__name__}; expected JSON text")
    meta = parse_json(raw, f"the metadata of {path}", MAX_META_BYTES)
    if not isinstance(meta, dict):
        raise ImgnetError(f"the metadata of {path} is a JSON {type(meta).__name__}; expected an object")
    return meta


def check_meta(path: Path, meta: dict) -> int:
    """The record count of a complete split's metadata, once its fields are the ones this reader knows."""
    if not meta.get("complete"):
        raise ImgnetError(f"{path} is incomplete (an interrupted prep): rerun the same `imgnet prep` command to finish it")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ImgnetError(f"{path} has format version {meta.get('format_version')}; expected one of "
                          f"{', '.join(map(str, READABLE_VERSIONS))}: rerun `imgnet prep --force`")
    size = meta_size(meta)
    if type(size) is not int or not MIN_SIZE <= size <= MAX_SIZE or meta.get("image_shape") != list(image_shape(size)):
        raise ImgnetError(f"{path} holds images of shape {meta.get('image_shape')} (size {size!r}); expected "
                          f"[N, N, 3] with N its size, {MIN_SIZE} to {MAX_SIZE}")
    count = meta.get("count")
    if type(count) is not int or count < 0 or meta.get("encoding") not in ENCODINGS:
        raise ImgnetError(f"the metadata of {path} has count {count!r} and encoding {meta.get('encoding')!r}; "
                          "expected a record count and raw or jpeg")
    return count


def check_index(path: Path, meta: dict, count: int, labels: np.ndarray, blob: bytes, n_names: int) -> None:
    """The label and name index of a split: `count` of each, and (version 2) its checksum."""
    if len(labels) != count or n_names != count:
        raise ImgnetError(f"{path} lists {len(labels)} labels and {n_names} names but its metadata says {count} "
                          "records; rebuild it with `imgnet prep --force`")
    if meta["format_version"] >= 2 and index_crc(labels, blob) != meta.get("index_crc32"):
        raise ImgnetError(f"the label and name index of {path} fails its checksum (damaged on disk or in a copy); "
                          "copy it again, or rebuild it with `imgnet prep --force`")


def check_labels(data_dir: Path, path: Path, meta: dict, labels: np.ndarray) -> None:
    """The split at `path` was packed with `data_dir`'s labels.json, and its labels are in its range."""
    from imagenet_prep.labels import labels_sha256, read_labels_json

    lj = read_labels_json(data_dir)
    n = len(lj["classes"])
    if meta.get("num_classes") != n:
        raise ImgnetError(f"{path} was packed with {meta.get('num_classes')} classes but "
                          f"{data_dir / 'labels.json'} lists {n}; rerun `imgnet prep --force`")
    if meta.get("labels_sha256") and meta["labels_sha256"] != labels_sha256(lj):
        raise ImgnetError(f"{path} was packed with another label map than {data_dir / 'labels.json'}; "
                          "rerun `imgnet prep --force`")
    bad = labels[(labels < 0) | (labels >= n)]
    if len(bad):
        raise ImgnetError(f"{path} holds label {int(bad[0])} outside 0..{n - 1} of labels.json")
