"""Reading tar headers in place: the regular members of a tar (or of a tar nested in one, through a byte
window of the outer file), checked to lie within the archive and to end with the two zero blocks."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from imagenet_prep.errors import ImgnetError
from imagenet_prep.sources.base import junk, os_failure, shown, skip


class Window(io.RawIOBase):
    """A read-only view of bytes [start, start + size) of an open file, for tarfile to scan a nested tar."""

    def __init__(self, f, start: int, size: int):
        self._f, self._start, self._size, self._pos = f, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = max(0, pos + (0, self._pos, self._size)[whence])
        return self._pos

    def readinto(self, b) -> int:
        n = max(0, min(len(b), self._size - self._pos))
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(b)[:n]) if n else 0
        self._pos += got
        return got


def tar_files(tf: tarfile.TarFile, where: str, limit: int, at: str | None = None) -> tuple[list[tarfile.TarInfo],
                                                                                        list[dict]]:
    """Regular members of an open tar (headers only), checked to lie within `limit` bytes; junk skipped
    (named `<at>:<member>`; `at`: the tar's location, by default `where`)."""
    files, skipped, at = [], [], where if at is None else at
    try:
        for m in tf:
            base = m.name.rsplit("/", 1)[-1]
            if m.isdir():
                continue
            reason = junk(base, False) if m.isreg() else "not a regular file in the tar"
            if m.issparse():  # its stored bytes are not its content: it cannot be read in place by byte range
                reason = "a sparse member (GNU tar -S), which is not read in place; re-create the tar without -S"
            if reason:
                skipped.append(skip(f"{at}:{m.name}", reason))
            elif m.offset_data + m.size > limit:
                raise ImgnetError(f"{where}: member {shown(m.name)} ends at byte {m.offset_data + m.size} but the tar has "
                                  f"{limit}; expected a complete archive (re-download it)")
            else:
                files.append(m)
    except tarfile.TarError as e:
        raise ImgnetError(f"{where}: not a readable tar ({e}); expected an uncompressed tar archive") from e
    except OSError as e:
        raise os_failure(where, e) from e
    check_tar_end(tf, where, limit)
    return files, skipped


def check_tar_end(tf: tarfile.TarFile, where: str, limit: int | None = None) -> None:
    """A tar ends with two zero blocks: tarfile ends its iteration without a word at a header cut short, at
    a damaged header and at a cut exactly between members, so the bytes where it stopped must be those
    blocks. `limit`: the tar's size (a nested tar: its declared size), None for a stream (read on)."""
    at = tf.offset
    try:
        if limit is not None and at + 2 * tarfile.BLOCKSIZE > limit:
            tail = b"\1"  # cut short: no room for the end blocks
        else:
            tf.fileobj.seek(at)
            tail = tf.fileobj.read(2 * tarfile.BLOCKSIZE)
    except OSError as e:
        raise os_failure(where, e) from e
    if len(tail) != 2 * tarfile.BLOCKSIZE or tail.count(0) != len(tail):
        raise ImgnetError(f"{where}: the tar ends early or is damaged at byte {at} (after {len(tf.members)} "
                          "members, where two zero blocks or the next header should be); expected a complete "
                          "archive (re-download it)")


def open_tar(path: Path) -> tarfile.TarFile:
    """An uncompressed tar opened for its headers; a one-line error where it is not one or cannot be read."""
    try:
        return tarfile.open(path, "r:")
    except tarfile.TarError as e:
        raise ImgnetError(f"{path}: not a readable tar ({e}); expected the official uncompressed archive") from e
    except OSError as e:
        raise os_failure(str(path), e) from e


def list_tar(path: Path) -> tuple[list[tarfile.TarInfo], list[dict]]:
    """The regular members of the tar at `path` (headers only) and the members skipped."""
    with open_tar(path) as tf:
        return tar_files(tf, str(path), path.stat().st_size)
