"""Reading a zip in place: its central directory parsed straight from the bytes (zipfile.ZipFile would build
one ZipInfo per member: 2M for Kaggle's zip), and one member read by its local header's offset with one
read, inflated with a bound and checked against its CRC-32.

The directory is data to check, as zipfile checks it: every entry in its declared size is parsed and their
number must be the one the end record declares; a name listed twice is an error; a member's local header must
name the member its central entry lists, with the same method (and sizes and CRC where the local header has
them), so that an entry pointing at another member's bytes is refused instead of read under its name."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Callable

from imagenet_prep.errors import ImgnetError, shown

STORED, DEFLATED = 0, 8
_EOCD, _Z64_LOCATOR, _Z64_EOCD = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"
_CENTRAL, _LOCAL = b"PK\x01\x02", b"PK\x03\x04"
_CENTRAL_FMT = struct.Struct("<4s6H3L5H2L")  # 46 bytes: sig, versions, flags, method, time, date, crc, sizes, ...
_CHUNK = 1 << 24                              # bytes of central directory parsed at a time
_LOCAL_SLACK = 1024                           # local name + extra fields read along with the data (one read)


def _span(f, size: int, where: str) -> tuple[int, int, int]:
    """(entries, central directory offset, its size), from the end record (ZIP64 where the counts overflow),
    offsets corrected for bytes prepended to the archive as zipfile does."""
    tail_len = min(size, 22 + 65535)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(_EOCD)
    if at < 0 or at + 22 > len(tail):
        raise ImgnetError(f"{where}: no zip end record; expected the complete Kaggle zip (re-download it)")
    _, _, _, _, n, cd_size, cd_offset, _ = struct.unpack_from("<4s4H2LH", tail, at)
    end = size - tail_len + at
    if n == 0xFFFF or 0xFFFFFFFF in (cd_size, cd_offset):
        loc = at - 20
        if loc < 0 or tail[loc:loc + 4] != _Z64_LOCATOR:
            raise ImgnetError(f"{where}: a ZIP64 archive without its ZIP64 locator; expected a complete zip")
        end = struct.unpack_from("<4sLQL", tail, loc)[2]
        f.seek(end)
        rec = f.read(56)
        if len(rec) != 56 or rec[:4] != _Z64_EOCD:
            raise ImgnetError(f"{where}: no ZIP64 end record at byte {end}; expected a complete zip")
        n, cd_size, cd_offset = struct.unpack("<4sQ2H2L4Q", rec)[7:]
    shift = end - cd_size - cd_offset  # bytes before the archive (a self-extractor stub, a concatenation)
    if shift < 0:
        raise ImgnetError(f"{where}: its central directory would start before the file; expected a complete zip")
    return n, cd_offset + shift, cd_size


def _zip64(extra: bytes, usize: int, csize: int, offset: int, where: str) -> tuple[int, int]:
    """(compressed size, local header offset) with the ZIP64 extra field (0x0001) applied; a field shorter than
    the values it must hold is an error."""
    i = 0
    while i + 4 <= len(extra):
        tag, n = struct.unpack_from("<HH", extra, i)
        if tag == 1:
            vals, j = [], i + 4
            for v in (usize, csize, offset):
                if v == 0xFFFFFFFF:
                    if j + 8 > min(i + 4 + n, len(extra)):
                        raise ImgnetError(f"{where}: its ZIP64 extra field holds {min(n, len(extra) - i - 4)} bytes, "
                                          "fewer than the sizes and offset it stands for; expected a complete zip "
                                          "(re-download it)")
                    vals.append(struct.unpack_from("<Q", extra, j)[0])
                    j += 8
                else:
                    vals.append(v)
            return vals[1], vals[2]
        i += 4 + n
    if 0xFFFFFFFF in (csize, offset):
        raise ImgnetError(f"{where}: a ZIP64 member without its ZIP64 extra field; expected a complete zip "
                          "(re-download it)")
    return csize, offset


def _damaged(where: str, what: str) -> ImgnetError:
    return ImgnetError(f"{where}: {what}; expected a complete zip (re-download it)")


def central_directory(path: Path, keep: Callable[[bytes], bool] = lambda raw: True):
    """Yield (name, local header offset, compressed size, method, crc, flags) for every member whose raw name
    `keep` accepts; others are passed over unparsed. The whole directory is read: its entries must fill its
    declared size and be as many as the end record declares, and the members kept must be named once each."""
    where = str(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        n, pos, cd_size = _span(f, size, where)
        f.seek(pos)
        buf, i, seen, left, names = b"", 0, 0, cd_size, set()
        while left or i < len(buf):
            if i + 46 > len(buf) or i + 46 + sum(struct.unpack_from("<3H", buf, i + 28)) > len(buf):
                more = f.read(min(_CHUNK, left))
                left -= len(more)
                if not more:
                    raise _damaged(where, f"the central directory ends inside entry {seen + 1} (it declares {n:,})")
                buf, i = buf[i:] + more, 0
                continue
            sig, _, _, flags, method, _, _, crc, csize, usize, nlen, elen, clen, _, _, _, offset = \
                _CENTRAL_FMT.unpack_from(buf, i)
            if sig != _CENTRAL:
                raise _damaged(where, f"entry {seen + 1} of the central directory is damaged")
            raw = buf[i + 46:i + 46 + nlen]
            if keep(raw):
                if raw in names:  # (the kept ones only: Kaggle's 0.6M annotations need not be held in memory)
                    raise _damaged(where, f"member {shown(_decode(raw, flags))} is listed twice in the central "
                                   "directory")
                names.add(raw)
                name = _decode(raw, flags)
                if 0xFFFFFFFF in (csize, usize, offset):
                    csize, offset = _zip64(buf[i + 46 + nlen:i + 46 + nlen + elen], usize, csize, offset,
                                           f"{where}:{shown(name)}")
                yield name, offset, csize, method, crc, flags
            i += 46 + nlen + elen + clen
            seen += 1
    if seen != n:
        raise _damaged(where, f"the end record declares {n:,} members but the central directory holds {seen:,}")


def _decode(raw: bytes, flags: int) -> str:
    """A member name: UTF-8 under flag 0x800, else cp437. Bytes that are not UTF-8 under the flag keep themselves
    (surrogate escapes, as os.listdir and tarfile give them): the store writes such a name back as its bytes."""
    return raw.decode("utf-8", "surrogateescape") if flags & 0x800 else raw.decode("cp437")


def _check_local(head: bytes, name: str, size: int, method: int, crc: int):
    """Why the local header at the start of `head` is not that of the member the central entry lists, or None:
    its name must be `name` (an image's record name: the member's last path parts), its method the same, and
    its sizes and CRC-32 where it holds them (flag 3 puts them in a descriptor after the data instead)."""
    flags, lmethod, _, _, lcrc, lcsize, _, nlen = struct.unpack_from("<4H3L2H", head, 6)[:8]
    local = _decode(head[30:30 + nlen], flags) if len(head) >= 30 + nlen else ""
    if local != name and not local.endswith("/" + name):
        return f"its local header names {shown(local)}: the central directory points {shown(name)} at another member"
    if lmethod != method:
        return f"its local header has method {lmethod}, its central entry {method}"
    if not flags & 8 and (lcrc != crc or lcsize not in (size, 0xFFFFFFFF)):
        return (f"its local header has CRC-32 {lcrc:08x} and {lcsize:,} bytes, its central entry {crc:08x} and "
                f"{size:,}")
    return None


def read_member(path: str, name: str, offset: int, size: int, method: int, crc: int, limit: int) -> bytes:
    """The uncompressed bytes of the member whose local header is at `offset` (`size` bytes compressed, already
    checked against `limit` by the caller, which inflating never passes either); BadImage when its local header
    is not the one its central entry lists, or when the bytes fail to inflate or fail their CRC-32 (a damaged or
    crafted download: reported as a rejected image, with the reason)."""
    from imagenet_prep.resize import BadImage

    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        head = f.read(30 + _LOCAL_SLACK + size)
        if len(head) < 30 or head[:4] != _LOCAL:
            raise ImgnetError(f"{path}: no zip member header at byte {offset} for {name}; the zip changed since it "
                              "was listed (remove DATA/.listing-*.npz or re-download it)")
        start = 30 + sum(struct.unpack_from("<HH", head, 26))
        why = _check_local(head, name, size, method, crc)
        if why:
            raise BadImage(f"zip member {why}; a damaged or crafted zip (re-download it)")
        data = head[start:start + size]
        if len(data) < size:  # unusually long local extra fields, or a truncated file
            f.seek(offset + start)
            data = f.read(size)
    if len(data) != size:
        raise BadImage(f"zip member truncated: {len(data)} of {size} bytes; re-download the zip")
    if method == DEFLATED:
        try:
            d = zlib.decompressobj(-15)
            data = d.decompress(data, limit)  # bounded: a crafted member could inflate without end
            if d.unconsumed_tail:
                raise BadImage(f"zip member inflates to more than {limit:,} bytes; expected an image "
                               "(a damaged or crafted zip)")
            data += d.flush()
        except zlib.error as e:
            raise BadImage(f"zip member cannot be inflated ({e}); the zip is damaged there, re-download it") from e
    got = zlib.crc32(data)
    if got != crc:
        raise BadImage(f"zip member fails its CRC-32 check (listed {crc:08x}, read {got:08x}); the zip is "
                       "damaged there, re-download it")
    return data
