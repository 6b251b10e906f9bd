"""The Hugging Face ImageNet-1k downloads (`ILSVRC/imagenet-1k`) as prep sources, read in place.

Layouts, in SRC or SRC/data/:
    hf-parquet  {train,validation}-NNNNN-of-NNNNN.parquet (test-* has no labels and is ignored); columns
                `image` {bytes: the original JPEG, path: "<original stem>_<wnid>.JPEG"} and `label`
                (int64, sorted-wnid index). Read with pyarrow one row group at a time.
    hf-targz    the script-era train_images_{0..4}.tar.gz and val_images.tar.gz: flat gzip tars of files
                named as `image.path` above. Gzip has no random access: each shard is streamed once.

Records are named by the original name (n01440764_10026.JPEG, ILSVRC2012_val_00000001.JPEG) and labelled
by the wnid in the file name, so that they are the records of the official tars. These sources always
carry the 1000 ILSVRC2012 classes.

Neither format has per-image byte ranges, so an `Item` here locates an image inside its shard:
`path` is the shard, `offset` the parquet row group (0 for a tar.gz) and `size` the row within that
row group (the member's position in the tar.gz stream). `imagenet_prep.unordered` packs such items.
The names-only listing of each shard (paths and labels, no image bytes) is cached in DATA as the
official tars' listings are (sources.py), keyed by the shard's path, size and mtime.
"""

from __future__ import annotations

import gzip
import os
import re
import tarfile
import zlib
from pathlib import Path

from tqdm import tqdm

from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import is_wnid, load_class_meta
from imagenet_prep.sources import _junk, _listing_file, _load_listing, _save_listing, _skip, _Split, os_failure, shown

PARQUET, TARGZ = "hf-parquet", "hf-targz"
LAYOUTS = (PARQUET, TARGZ)
_PARQUET_NAME = re.compile(r"(train|validation|test)-(\d{5})-of-(\d{5})\.parquet")
_TARGZ = {"train": [f"train_images_{i}.tar.gz" for i in range(5)], "val": ["val_images.tar.gz"]}
_SPLIT_OF = {"train": "train", "validation": "val"}


def _wnids() -> list[str]:
    return sorted(c["wnid"] for c in load_class_meta().classes)  # index = the `label` column's value


def original_name(path: str | None, where: str) -> tuple[str, str]:
    """`<folder>/<stem>_<wnid>.<ext>` -> (`<stem>.<ext>`, wnid); `where` names the shard and row for errors."""
    if not path:
        raise ImgnetError(f"{where} has no image path; expected <original stem>_<wnid>.JPEG, "
                          "e.g. n01440764_10026_n01440764.JPEG")
    base = path.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    orig, _, wnid = (stem if dot else base).rpartition("_")
    if not orig or not is_wnid(wnid):
        raise ImgnetError(f"{where} has image path {path!r}; expected <original stem>_<wnid>.JPEG, "
                          "e.g. n01440764_10026_n01440764.JPEG")
    return orig + dot + (ext if dot else ""), wnid


# ----------------------------------------------------------------------------------- parquet
def _parquet_file(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except OSError as e:
        if e.errno is None:  # pyarrow's own errors about the content carry no errno
            raise ImgnetError(f"{path}: not a readable parquet file ({e}); expected a complete shard of "
                              "ILSVRC/imagenet-1k (re-download it)") from e
        raise os_failure(str(path), e) from e
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError ... for a damaged file
        raise ImgnetError(f"{path}: not a readable parquet file ({e}); expected a complete shard of "
                          "ILSVRC/imagenet-1k (re-download it)") from e


def _check_schema(pf, path: Path) -> None:
    import pyarrow as pa

    schema = pf.schema_arrow
    image = schema.field("image").type if "image" in schema.names else None
    ok = (sorted(schema.names) == ["image", "label"] and pa.types.is_integer(schema.field("label").type)
          and pa.types.is_struct(image) and sorted(image.field(i).name for i in range(image.num_fields)) == ["bytes", "path"])
    if not ok:
        raise ImgnetError(f"{path} has columns {', '.join(f'{f.name}: {f.type}' for f in schema)}; expected "
                          "image: struct<bytes: binary, path: string> and label: int64 (ILSVRC/imagenet-1k)")


def _fields(table) -> dict:
    """The image struct's fields as arrays; flatten() keeps a null image null in each field."""
    image = table.column("image").combine_chunks()
    return dict(zip((f.name for f in image.type), image.flatten()))


def _list_parquet(path: Path, wnids: list[str]) -> list[tuple]:
    """(name, wnid, path, row group, row) of every row, from the path and label columns only."""
    pf = _parquet_file(path)
    _check_schema(pf, path)
    entries, p = [], str(path)
    for rg in range(pf.num_row_groups):
        try:
            t = pf.read_row_group(rg, columns=["image.path", "label"])
            paths = _fields(t)["path"].to_pylist()
            labels = t.column("label").to_pylist()
        except Exception as e:  # noqa: BLE001
            raise ImgnetError(f"{path} row group {rg}: unreadable ({e}); expected a complete shard (re-download it)") from e
        for row, (ipath, label) in enumerate(zip(paths, labels)):
            where = f"{path} row group {rg} row {row}"
            name, wnid = original_name(ipath, where)
            if label is None or not 0 <= label < len(wnids) or wnids[label] != wnid:
                raise ImgnetError(f"{where} ({ipath}) has label {label}, but its wnid {wnid} is index "
                                  f"{wnids.index(wnid) if wnid in wnids else 'none'} in sorted-wnid order; "
                                  "expected the label of the class in the path")
            entries.append((name, wnid, p, rg, row))
    return entries


def read_row_group(path: str, rg: int) -> list[tuple[str | None, bytes | None]]:
    """(image.path, image.bytes) of every row of one row group: the memory of one row group, not a shard."""
    pf = _parquet_file(Path(path))
    try:
        # one thread: each worker process is one core's share (pyarrow's pool would oversubscribe them)
        image = _fields(pf.read_row_group(rg, columns=["image"], use_threads=False))
        return list(zip(image["path"].to_pylist(), image["bytes"].to_pylist()))
    except OSError as e:
        if e.errno is not None:  # the file, not its content: stops the run, the rerun reads the row group again
            raise os_failure(f"{path} row group {rg}", e) from e
        raise ImgnetError(f"{path} row group {rg}: unreadable ({e}); expected a complete shard (re-download it)") from e
    except Exception as e:  # noqa: BLE001
        raise ImgnetError(f"{path} row group {rg}: unreadable ({e}); expected a complete shard (re-download it)") from e


def _parquet_shards(folder: Path) -> dict[str, tuple[list[Path], str | None]]:
    """{split: (shard paths in shard order, why they are incomplete or None)}: every NNNNN of one count."""
    found: dict[str, dict[int, Path]] = {}
    counts: dict[str, set[int]] = {}
    for p in folder.iterdir():
        m = _PARQUET_NAME.fullmatch(p.name)
        if m and m[1] in _SPLIT_OF and p.is_file():
            found.setdefault(m[1], {})[int(m[2])] = p
            counts.setdefault(m[1], set()).add(int(m[3]))
    out = {}
    for hf_split, shards in found.items():
        n = counts[hf_split]
        missing = [f"{hf_split}-{i:05d}-of-{max(n):05d}.parquet" for i in range(max(n)) if i not in shards]
        problem = None
        if len(n) > 1 or missing:
            problem = (f"{folder}: the {hf_split} shards are incomplete or mixed (counts {sorted(n)}, missing "
                       f"{', '.join(missing[:3]) or 'none'}{' ...' * (len(missing) > 3)}); expected all "
                       f"{hf_split}-NNNNN-of-{max(n):05d}.parquet of one revision (re-download the missing ones)")
        out[_SPLIT_OF[hf_split]] = ([shards[i] for i in sorted(shards)], problem)
    return out


def _targz_shards(folder: Path) -> dict[str, tuple[list[Path], str | None]]:
    out = {}
    for split, names in _TARGZ.items():
        missing = [n for n in names if not (folder / n).is_file()]
        if len(missing) < len(names):
            problem = (f"{folder} holds some of the {split} shards but not {', '.join(missing)}; expected all of "
                       f"{', '.join(names)} (re-download the missing ones)") if missing else None
            out[split] = ([folder / n for n in names if n not in missing], problem)
    return out


# ------------------------------------------------------------------------------------ tar.gz
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
    in `want` (default all) that are regular files and at most sources.MAX_IMAGE_BYTES, else None (a larger
    member, from a crafted shard, would only exhaust the memory)."""
    from imagenet_prep.sources import MAX_IMAGE_BYTES

    for pos, m, tf in _stream(path):
        read = m.isreg() and (want is None or pos in want) and m.size <= MAX_IMAGE_BYTES
        yield pos, m.name, (tf.extractfile(m).read() if read else None)


def _list_targz(path: Path, bar=None) -> tuple[list[tuple], list[dict]]:
    entries, skipped, p, known = [], [], str(path), set(_wnids())
    for pos, m, _ in _stream(path, bar):
        base = m.name.rsplit("/", 1)[-1]
        reason = "not a regular file in the tar" if not m.isreg() else _junk(base, False)
        if m.isdir():
            continue
        if reason:
            skipped.append(_skip(f"{p}:{m.name}", reason))
            continue
        name, wnid = original_name(m.name, f"{path} member {pos}")
        if wnid not in known:
            raise ImgnetError(f"{path} member {pos} ({shown(m.name)}) names class {wnid}, which is not one of the 1000 "
                              "ILSVRC2012 classes; expected <original stem>_<wnid>.JPEG with an ILSVRC2012 wnid")
        entries.append((name, wnid, p, 0, pos))
    return entries, skipped


# ---------------------------------------------------------------------------------- detection
def _split_of(split: str, shards: list[Path], problem: str | None, cache_dir, wnids: list[str], scan) -> _Split:
    """A split over `shards`; `scan(path, bar)` lists one shard: (entries, skipped). Listings are cached in DATA."""
    def entries():
        if problem:
            raise ImgnetError(problem)
        out, skipped, todo = [], [], []
        for p in shards:
            cache = _listing_file(cache_dir, [p])
            got = _load_listing(cache, [p])
            if got is None:
                todo.append((p, cache))
            else:
                out += got[1]
                skipped += got[2]
        with tqdm(total=sum(p.stat().st_size for p, _ in todo), unit="B", unit_scale=True, desc=f"list {split}",
                  dynamic_ncols=True, disable=None if todo else True) as bar:
            for (p, cache), (e, s) in zip(todo, _scan_all([p for p, _ in todo], scan, bar)):
                _save_listing(cache, [p], wnids, e, s)
                out += e
                skipped += s
        names = sorted(e[0] for e in out)
        dup = next((a for a, b in zip(names, names[1:]) if a == b), None)
        if dup:
            raise ImgnetError(f"image {shown(dup)} appears twice in the shards of {shards[0].parent}; expected each "
                              "image once (shards of two revisions mixed?)")
        return out, skipped
    where = f"{shards[0].parent}/{shards[0].name}" + (f" and {len(shards) - 1} more" if len(shards) > 1 else "")
    return _Split(where, wnids, entries, "the wnid in each image's name", locate=_in_shard)


def _in_shard(e: tuple) -> str:
    """The shard and the image's name there (image.path, the tar.gz member): <original stem>_<wnid>.<ext>."""
    stem, dot, ext = e[0].rpartition(".")
    return f"{e[2]}:{stem or ext}_{e[1]}{dot}{ext if stem else ''}"


def _scan_all(paths: list[Path], scan, bar):
    """scan(path, bar) of each shard (names only: the parquet path and label columns, the tar.gz headers).
    The tar.gz shards must be decompressed whole to list them (about 30 GB each): one process per shard."""
    if scan is not _list_targz or len(paths) < 2 or (os.cpu_count() or 1) < 2:
        yield from (scan(p, bar) for p in paths)
        return
    from imagenet_prep.pool import WorkerPool

    with WorkerPool(min(len(paths), os.cpu_count() or 1), name="list", hint="rerun the same command") as pool:
        for p, listed in zip(paths, pool.imap(_list_targz, paths, window=len(paths), describe=str)):
            bar.update(p.stat().st_size)
            yield listed


def _scan_parquet(wnids: list[str]):
    def scan(path: Path, bar) -> tuple[list[tuple], list[dict]]:
        entries = _list_parquet(path, wnids)
        bar.update(path.stat().st_size)
        return entries, []
    return scan


def detect(src: Path, cache_dir=None) -> tuple[str, dict[str, _Split]] | None:
    """(layout, splits) when SRC (or SRC/data) holds a Hugging Face download, else None. An incomplete set
    of shards is an error when that split is listed, so that a complete split can still be prepared."""
    for folder in (src / "data", src):
        if not folder.is_dir():
            continue
        for layout, shards, scan in ((PARQUET, _parquet_shards(folder), _scan_parquet),
                                     (TARGZ, _targz_shards(folder), lambda wnids: _list_targz)):
            if shards:
                wnids = _wnids()
                return layout, {s: _split_of(s, paths, problem, cache_dir, wnids, scan(wnids))
                                for s, (paths, problem) in shards.items()}
    return None
