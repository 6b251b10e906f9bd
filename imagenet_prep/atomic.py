"""Files written atomically and durably (a crash leaves the old file or the new one, never a torn one, and a
failed write on a full or read-only disk leaves no temporary file behind), and read with bounds (a file edited
by hand or replaced by a link to /dev/zero is a one-line error, never an endless read or a deep recursion)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path

from imagenet_prep.errors import ImgnetError


def os_reason(e: BaseException) -> str:
    """One line for an OSError, or for an h5py error that buried the errno in its text."""
    if isinstance(e, OSError) and e.errno:  # h5py sets errno but puts its whole report in strerror
        return os.strerror(e.errno)
    found = re.search(r"errno = (\d+)", str(e))
    if found:
        return os.strerror(int(found.group(1)))
    text = (getattr(e, "strerror", None) or str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


@contextlib.contextmanager
def replacing(*paths):
    """Yields one temporary path beside each of `paths` (the path itself when there is one). When the block
    ends normally every temporary file is fsynced, then each is renamed onto its path: all of them get the
    new content together or none does. Any failure (an OSError becomes ImgnetError naming the path), or an
    interrupt, removes the temporary files and leaves `paths` as they were."""
    paths = [Path(p) for p in paths]
    tmps = [p.with_name(f".{p.name}.tmp") for p in paths]
    current = paths[0]
    try:
        yield tmps[0] if len(tmps) == 1 else tmps
        for path, tmp in zip(paths, tmps):
            current = path
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for path in paths:  # before any rename: all of them get the new content, or none does
            if path.is_dir() and not path.is_symlink():
                raise ImgnetError(f"{path} is a folder; expected the file written there: remove the folder and "
                                  "rerun")
        for path, tmp in zip(paths, tmps):
            current = path
            os.replace(tmp, path)
    except OSError as e:
        raise ImgnetError(f"cannot write {current} ({os_reason(e)}); expected a writable folder with free "
                          "space") from e
    finally:
        for tmp in tmps:
            with contextlib.suppress(OSError):
                tmp.unlink()  # gone already after a successful rename


def write_text(path, text: str) -> None:
    """Write `text` to `path` via a temporary file, fsync and rename; ImgnetError naming the path on failure."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=1) + "\n")


def check_writable(folder, purpose: str = "") -> None:
    """ImgnetError unless a file can be created in `folder` (checked by creating one: as root, permission
    bits prove nothing, while a read-only mount or a full inode table still refuses)."""
    folder = Path(folder)
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ImgnetError(f"{folder} is not writable ({os_reason(e)}){' ' + purpose if purpose else ''}; "
                          "expected a folder you can create files in") from e


def read_bounded(path, limit: int, what: str = "this file") -> bytes:
    """The bytes of the regular file `path`, refusing anything else (a link to /dev/zero or a FIFO would
    never end) and anything over `limit` bytes with an ImgnetError; FileNotFoundError passes through,
    other OSErrors become ImgnetError naming the path."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO must not wait for a writer
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ImgnetError(f"cannot read {path} ({os_reason(e)})") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImgnetError(f"{path} is not a regular file (a device, FIFO or folder, or a link to one); "
                              f"expected {what}")
        if st.st_size > limit:
            raise ImgnetError(f"{path} is {st.st_size:,} bytes, more than the {limit:,} expected of {what}")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise ImgnetError(f"cannot read {path} ({os_reason(e)})") from e
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew while being read
        raise ImgnetError(f"{path} is more than the {limit:,} bytes expected of {what}")
    return data


def read_json(path, limit: int, what: str):
    """read_bounded + parse_json of a small JSON file in DATA or SRC: a link to /dev/zero, a FIFO, a file over
    `limit` bytes, text that is not JSON or is nested too deeply are each a one-line ImgnetError ending with
    what was expected (`what`); FileNotFoundError passes through. The caller checks the schema."""
    raw = read_bounded(path, limit, what)
    try:
        return parse_json(raw, path, limit)
    except ImgnetError as e:
        raise ImgnetError(f"{e}; expected {what}") from None


def parse_json(data, origin, limit: int):
    """json.loads of `data` (bytes or str) no longer than `limit`; ImgnetError naming `origin` for text that
    is not JSON, too long, or nested too deeply for the parser (a crafted file, not a real one)."""
    if len(data) > limit:
        raise ImgnetError(f"{origin} is {len(data):,} bytes, more than the {limit:,} expected")
    try:
        return json.loads(data)
    except RecursionError:
        raise ImgnetError(f"{origin} is JSON nested too deeply to read; expected the file imgnet writes") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ImgnetError(f"{origin} is not readable JSON ({e})") from None
