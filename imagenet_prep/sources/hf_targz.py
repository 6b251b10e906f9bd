"""The script-era Hugging Face download of ILSVRC/imagenet-1k, read in place (hf.py: what both HF forms share).

SRC or SRC/data/ holds train_images_{0..4}.tar.gz and val_images.tar.gz: flat gzip tars of files named
`<original stem>_<wnid>.JPEG`. Gzip has no random access: each shard is one unit of this streamed layout,
streamed once by the main process while workers decode windows of it (pack/streamed.py).
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from pathlib import Path

from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import sorted_wnids
from imagenet_prep.sources import base
from imagenet_prep.sources.base import Entry, Layout, Listing, junk, os_failure, shown, skip
from imagenet_prep.sources.hf import check_name, download_folder, original_name, shard_split, targz_shards


class _Counted:
    """A file read through `bar`: the listing's progress in bytes of the compressed shard."""

    def __init__(self, f, bar):
        self._f, self._bar = f, bar

    def read(self, n=-1):
        data = self._f.read(n)
        if self._bar is not None:
            self._bar.update(len(data))
        return data


class _Tail:
    """The decompressed stream as tarfile reads it, keeping its last `keep` bytes: where the iteration stops,
    the end-of-archive blocks are checked in them (tarfile's stream mode reads ahead at most a buffer)."""

    def __init__(self, f, keep: int):
        self._f, self._keep, self.buf, self.total = f, keep, bytearray(), 0

    def read(self, n=-1):
        data = self._f.read(n)
        self.total += len(data)
        self.buf += data
        if len(self.buf) > self._keep:
            del self.buf[:len(self.buf) - self._keep]
        return data

    def at(self, pos: int, n: int) -> bytes:
        """Bytes [pos, pos + n) of the stream (b"" where it ends first), then the rest is read to its end so
        that gzip checks its CRC and length."""
        while self.total < pos + n and self.read(1 << 16):
            pass
        start = pos - (self.total - len(self.buf))
        got = bytes(self.buf[start:start + n]) if start >= 0 else b""
        self._keep = 0
        while self.read(1 << 20):
            pass
        return got


def _stream(path: Path, bar=None):
    """(position, TarInfo, open tar) over a tar.gz read once as a stream. Members are not kept (tarfile keeps
    every TarInfo it has read, about 260,000 per train shard). A damaged or short shard is a one-line error:
    after the last member the tar's two zero blocks must follow and the gzip stream must end with its CRC."""
    bufsize = 1 << 20
    try:
        with open(path, "rb") as f, gzip.GzipFile(fileobj=_Counted(f, bar), mode="rb") as gz:
            tail = _Tail(gz, 4 * bufsize)
            with tarfile.open(fileobj=tail, mode="r|", bufsize=bufsize) as tf:
                pos = 0
                while (m := tf.next()) is not None:
                    yield pos, m, tf
                    tf.members.clear()
                    pos += 1
                end = tail.at(tf.offset, 2 * tarfile.BLOCKSIZE)
                if len(end) != 2 * tarfile.BLOCKSIZE or end.count(0) != len(end):
                    raise ImgnetError(f"{path}: the tar inside ends early or is damaged after member {pos} (byte "
                                      f"{tf.offset} of the stream, where two zero blocks or the next header should "
                                      "be); expected a complete Hugging Face shard (re-download it)")
    except OSError as e:
        if e.errno is not None:
            raise os_failure(str(path), e) from e
        raise _unreadable(path, e) from e
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise _unreadable(path, e) from e


def _unreadable(path: Path, e: Exception) -> ImgnetError:
    return ImgnetError(f"{path}: not a readable .tar.gz ({type(e).__name__}: {e}); expected a complete Hugging Face "
                       "shard (re-download it)")


def stream_targz(path: Path, want=None):
    """Yield (position, member name, bytes) over the shard, reading it once; bytes only for the positions
    in `want` (default all) that are regular files and at most base.MAX_IMAGE_BYTES, else None (a larger
    member, from a crafted shard, would only exhaust the memory), read in bounded chunks."""
    for pos, m, tf in _stream(path):
        read = m.isreg() and (want is None or pos in want) and m.size <= base.MAX_IMAGE_BYTES
        yield pos, m.name, (base.read_capped(tf.extractfile(m), m.size, f"{path}:{m.name}") if read else None)


def _list_targz(path: Path, bar=None) -> tuple[list[Entry], list[dict]]:
    """(entries, skipped) of one shard, from its member headers (the shard is decompressed whole)."""
    entries, skipped, p, known = [], [], str(path), set(sorted_wnids())
    for pos, m, _ in _stream(path, bar):
        base = m.name.rsplit("/", 1)[-1]
        reason = "not a regular file in the tar" if not m.isreg() else junk(base, False)
        if m.isdir():
            continue
        if reason:
            skipped.append(skip(f"{p}:{m.name}", reason))
            continue
        name, wnid = original_name(m.name, f"{path} member {pos}")
        if wnid not in known:
            raise ImgnetError(f"{path} member {pos} ({shown(m.name)}) names class {wnid}, which is not one of the 1000 "
                              "ILSVRC2012 classes; expected <original stem>_<wnid>.JPEG with an ILSVRC2012 wnid")
        entries.append(Entry(name, wnid, p, 0, pos))
    return entries, skipped


class HfTargz(Layout):
    name = "hf-targz"
    description = "Hugging Face tar.gz shards (train_images_{0..4}.tar.gz, val_images.tar.gz, in SRC or SRC/data/)"
    streamed = True
    sharded = True
    unit_in_worker = False  # a unit is a whole shard (about 30 GB): streamed once, decoded by windows

    def detect(self, src: Path) -> bool:
        return download_folder(src, targz_shards) is not None

    def list(self, src: Path, cache_dir=None) -> Listing:
        """An incomplete set of shards is an error when that split is listed."""
        wnids = sorted_wnids()
        return Listing({s: shard_split(s, paths, problem, cache_dir, wnids, _list_targz, parallel=True)
                        for s, (paths, problem) in download_folder(src, targz_shards).items()})

    def read_unit(self, path: str, unit: int, want: dict[int, str]):
        last = max(want)
        for pos, mname, data in stream_targz(Path(path), want=want.keys()):
            if pos in want:
                check_name(mname, want[pos], f"{path} member {pos}")
                yield pos, data, (None if data is not None else f"over the {base.MAX_IMAGE_BYTES:,} bytes of the "
                                  "largest image the toolkit reads")
            if pos >= last:
                return
        raise ImgnetError(f"{path} ends before member {last}, which its listing in DATA has; the shard changed since "
                          "it was listed: rerun with --force")


LAYOUT = HfTargz()
