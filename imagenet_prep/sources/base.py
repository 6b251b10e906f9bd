"""The public base of the source layouts: the listed records, the layout protocol and the helpers every
layout shares (junk files, skips, one-line I/O errors, reading an item's bytes).

A layout module (`imagenet_prep/sources/<layout>.py`) defines one `Layout` subclass and an instance of it;
`registry.LAYOUTS` lists those instances in detection order. Discovery asks each in turn to `detect` SRC,
then lets the first that does `list` it: a `Listing` of `ListedSplit`s, each of which lists its `Entry`s on
demand. `discover` labels the entries and turns them into `Item`s, which any process reads with `read_item`
(in-order layouts) or which a streamed layout reads unit by unit (`Layout.read_unit`).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from imagenet_prep.errors import ImgnetError, shown  # noqa: F401 - shown: part of this module's interface

SPLITS = ("train", "val")  # ImageNet's splits
# every split a layout may list: test is the held-out split of a download that has one (CIFAR), not ImageNet's val
LAYOUT_SPLITS = (*SPLITS, "test")
# the largest source image read, the one bound on what a declared size (a file, a tar or zip member, a shard's
# row) may cost before it is read: an 8-bit RGB bitmap at twice Pillow's pixel limit (the largest the resize
# decodes) is 537 MB; ImageNet's largest JPEG is under 20 MB. A zip member inflates to at most this too.
MAX_IMAGE_BYTES = 640 << 20
# the extensions of image files: a file in a flat val with another one that the ground truth cannot label is a
# stray file (notes.txt), skipped; webdataset: the member of a sample that holds its image
IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "pbm", "tif", "tiff", "gif"})
MAX_SMALL_FILE_BYTES = 256 << 20  # labels, devkit and its contents: LOC_val_solution.csv is the largest, ~10 MB

# Files that operating systems and file managers leave in image folders; anything else is an image
# candidate, whatever its extension: decoding by content happens in resize.py.
JUNK_FILES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"})
JUNK_DIRS = frozenset({"__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information", "lost+found"})


@dataclass(frozen=True, slots=True)
class Entry:
    """One listed image before labelling: its name, its class (None in a flat split, labelled by ground
    truth) and where its bytes are (the rest of its `Item`)."""

    name: str              # the record's name, e.g. n01440764_10026.JPEG
    cls: str | None        # class folder / class tar / wnid; None: flat
    path: str              # the file, the archive, or the shard
    offset: int = 0        # byte offset in `path` (a streamed layout: its unit, e.g. the parquet row group)
    size: int = -1         # bytes (-1: the whole file; a streamed layout: the position inside the unit)
    method: int = -1       # a zip member: compression method (0 stored, 8 deflate), offset = its local header
    crc: int = -1          # a zip member: CRC-32 of the uncompressed bytes


@dataclass(frozen=True, slots=True)
class Item:
    """One source image: bytes path[offset:offset + size] (size -1: the whole file)."""

    name: str   # source file name, e.g. n01440764_10026.JPEG or ILSVRC2012_val_00000001.JPEG
    label: int  # index in the label map
    path: str
    offset: int = 0
    size: int = -1
    method: int = -1  # a zip member: compression method (0 stored, 8 deflate), offset = its local header
    crc: int = -1     # a zip member: CRC-32 of the uncompressed bytes, checked on reading


def locate_entry(entry: Entry) -> str:
    """An entry -> the file (a whole file: size -1) or `<archive>:<member>`."""
    return entry.path if entry.size < 0 else f"{entry.path}:{entry.name}"


@dataclass
class ListedSplit:
    """One split of a source as its layout found it; `entries()` lists it (the slow part, done only for the
    splits asked for)."""

    where: str                       # the folder or tar, for messages
    classes: list[str] | None        # class folders / class tars; None: flat, labelled by ground truth
    entries: Callable[[], tuple[list[Entry], list[dict]]]  # () -> (entries, skipped [{"name", "reason"}])
    labelled_by: str = ""            # where the classes of a split that is not flat come from, for `origin`
    relabel: bool = False            # a val that labels itself (shards) but that --val-labels may relabel
    problem: str | None = None       # why the split cannot be listed (an incomplete archive): its classes are partial
    locate: Callable[[Entry], str] = locate_entry  # an entry -> where it is (Source.locate)


@dataclass
class Listing:
    """What a layout found in SRC: its splits, and label files it holds beyond those in SRC's top folder
    ({name: (origin, () -> bytes)}, e.g. Kaggle's CSV inside the zip)."""

    splits: dict[str, ListedSplit]
    files: dict[str, tuple[str, Callable[[], bytes]]] = field(default_factory=dict)


class Layout:
    """A source layout. Subclasses set `name` and `description` and implement `detect` and `list`; a streamed
    layout (no byte range per image) sets `streamed` (and `unit_in_worker`) and implements `read_unit`."""

    name: str = ""          # recorded in each split's fingerprint and metadata, and in prep-report.json
    description: str = ""  # one line for the "matches no known source layout" message
    streamed: bool = False  # False: read item by item, in record order, with read_item; True: unit by unit
    unit_in_worker: bool = True  # streamed: one worker reads and decodes a whole unit (else the main process
    #                              streams each unit and workers decode windows of it)
    prefers_csv: bool = False  # a flat val is labelled by Kaggle's LOC_val_solution.csv before a devkit
    in_listed_order: bool = False  # records in the listing's order (the download's), not sorted by class and name
    native_size: int | None = None  # every image is native_size x native_size: prep never upscales them
    options: tuple[str, ...] = ()  # keyword options `list` takes (e.g. "coarse"), passed only when asked for
    names_identify: bool = True  # a record name names one image (ILSVRC's): one in train and in val is a leak
    sharded: bool = False  # streamed from shards whose progress is kept by file name: which holds what is fingerprinted

    def detect(self, src: Path) -> bool:
        """Whether SRC (an absolute folder) holds this layout; cheap: no listing."""
        raise NotImplementedError

    def list(self, src: Path, cache_dir=None, **options) -> Listing:
        """The splits SRC holds; `cache_dir`: where slow listings may be kept (cache.py); `options`: those of
        `self.options` the user asked for."""
        raise NotImplementedError

    def differs(self, item: Item) -> str | None:
        """Why an item's bytes are not those of the official archives (re-encoded), else None."""
        return None

    def read_unit(self, path: str, unit: int, want: dict[int, str]) -> Iterator[tuple[int, bytes | None, str | None]]:
        """Streamed layouts: (position, bytes, None) for each position of `want` ({position: the record name the
        listing gave it, checked against the shard}) in unit `unit` of `path` (Item.path, Item.offset), in
        position order; bytes None with the reason where the image cannot be used. A position past the unit's
        end, or a name that changed, is an error naming it (the shard changed since it was listed)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<layout {self.name}>"


# ------------------------------------------------------------------------------------- helpers
def os_failure(what: str, e: OSError, hint: str = "fix the source (drive, network share, permissions) and rerun "
               "the same command to continue") -> ImgnetError:
    """An I/O failure while reading the source, as a one-line error naming `what` and the errno: it stops
    the run (skipping the image or folder would silently lose it)."""
    code = errno.errorcode.get(e.errno, "no errno") if e.errno is not None else "no errno"
    return ImgnetError(f"cannot read {shown(what)} ({code}: {e.strerror or e}); an I/O failure, not a bad image: "
                       f"{hint}")


def read_failure(path: str, name: str, e: OSError) -> ImgnetError:
    """os_failure for the bytes of one image: nothing is recorded for it, the rerun reads it again."""
    if path.endswith(name):
        where = path if name.isprintable() else f"{shown(name)} in {shown(path[:len(path) - len(name)])}"
    else:
        where = f"{shown(name)} in {shown(path)}"
    return os_failure(where, e, "nothing was recorded for it; fix the source (drive, network share, permissions) "
                      "and rerun the same command to continue")


def too_large(size: int):
    """BadImage for source bytes over MAX_IMAGE_BYTES: a content rejection, decided before anything is read."""
    from imagenet_prep.resize import BadImage

    return BadImage(f"{size:,} bytes, over the {MAX_IMAGE_BYTES:,} of the largest image the toolkit reads "
                    "(twice Pillow's pixel limit, uncompressed)")


def read_item(item: Item) -> bytes:
    """The bytes of an Item; safe in any process (opens the file itself, reads only the item's range). BadImage
    (a rejection) for a file or member over MAX_IMAGE_BYTES, which would only exhaust the memory."""
    if item.size > MAX_IMAGE_BYTES:  # a zip member's: compressed
        raise too_large(item.size)
    if item.method >= 0:
        from imagenet_prep.sources.zipscan import read_member

        return read_member(item.path, item.name, item.offset, item.size, item.method, item.crc, MAX_IMAGE_BYTES)
    with open(item.path, "rb", buffering=0) as f:
        if item.size < 0:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_IMAGE_BYTES:
                raise too_large(size)
            return f.read(MAX_IMAGE_BYTES + 1)
        f.seek(item.offset)
        data = f.read(item.size)
    if len(data) != item.size:
        raise ImgnetError(f"{item.path}: {item.name} should be {item.size} bytes at offset {item.offset}, "
                          f"read {len(data)}; the file changed or is truncated since it was listed")
    return data


def read_capped(f, size: int, what: str) -> bytes:
    """`size` bytes of a stream (a member of a compressed tar) read in chunks of at most 1 MB: a size over
    MAX_IMAGE_BYTES is refused before anything is read (too_large), and no more than `size` is ever read."""
    if size > MAX_IMAGE_BYTES:
        raise too_large(size)
    chunks, got = [], 0
    while got < size:
        chunk = f.read(min(1 << 20, size - got))
        if not chunk:
            raise ImgnetError(f"{shown(what)} ends after {got:,} of its {size:,} bytes; expected a complete archive "
                              "(re-download it)")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def relative(src, where: str) -> str:
    """`where` (a path under SRC, or `<archive under SRC>:<member>`) relative to SRC."""
    root = os.path.join(os.fspath(src), "")
    return where[len(root):] if where.startswith(root) else where


def junk(name: str, is_dir: bool) -> str | None:
    """Why `name` is not an image candidate (hidden, a system file or folder), or None."""
    if name.startswith("."):
        return f"hidden {'folder' if is_dir else 'file'}"
    if not is_dir and name.lower() in JUNK_FILES:
        return "system file"
    if is_dir and name in JUNK_DIRS:
        return "system folder"
    return None


def skip(name: str, reason: str) -> dict:
    """A skipped file as the report lists it."""
    return {"name": name, "reason": reason}


def small_file_reader(path: Path, what: str) -> Callable[[], bytes]:
    """() -> the bytes of a small file of SRC (labels, devkit), read bounded: a link to /dev/zero or a FIFO, or a
    file over MAX_SMALL_FILE_BYTES, is a one-line error instead of a hang or a MemoryError."""
    from imagenet_prep.atomic import read_bounded

    def read() -> bytes:
        try:
            return read_bounded(path, MAX_SMALL_FILE_BYTES, what)
        except FileNotFoundError as e:
            raise os_failure(str(path), e) from e
    return read
