"""What the two Hugging Face ImageNet-1k downloads (`ILSVRC/imagenet-1k`) share: hf_parquet.py and hf_targz.py.

Both sit in SRC or SRC/data/ and name each image `<original stem>_<wnid>.JPEG`; records are named by the
original name (n01440764_10026.JPEG, ILSVRC2012_val_00000001.JPEG) and labelled by the wnid in the file name,
so that they are the records of the official tars. These sources always carry the 1000 ILSVRC2012 classes.

Neither format has per-image byte ranges, so an `Item` here locates an image inside its shard: `path` is
the shard, `offset` the unit (the parquet row group; 0 for a tar.gz) and `size` the position within that
unit (the row; the member's position in the tar.gz stream): these layouts are streamed (pack/streamed.py).
The names-only listing of each shard (paths and labels, no image bytes) is cached in DATA (cache.py), keyed
by the shard's path, size and mtime.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import is_wnid
from imagenet_prep.sources.base import Entry, ListedSplit
from imagenet_prep.sources.checks import check_unique
from imagenet_prep.sources.cache import listing_file, load_listing, save_listing

Shards = dict[str, tuple[list[Path], str | None]]  # {split: (shard paths in shard order, why incomplete or None)}


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


_PARQUET_NAME = re.compile(r"(train|validation|test)-(\d{5})-of-(\d{5})\.parquet")
_TARGZ = {"train": [f"train_images_{i}.tar.gz" for i in range(5)], "val": ["val_images.tar.gz"]}
_SPLIT_OF = {"train": "train", "validation": "val"}


def parquet_shards(folder: Path) -> Shards:
    """{split: (shard paths in shard order, why they are incomplete or None)}: every NNNNN of one count
    (test-* has no labels and is ignored)."""
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
        past = [shards[i].name for i in sorted(shards) if i >= max(n)]  # numbered past the count they declare
        problem = None
        if len(n) > 1 or missing or past:
            problem = (f"{folder}: the {hf_split} shards are incomplete or mixed (counts {sorted(n)}, missing "
                       f"{', '.join(missing[:3]) or 'none'}{' ...' * (len(missing) > 3)}"
                       f"{f', numbered past their count: {past[0]}' if past else ''}); expected all "
                       f"{hf_split}-NNNNN-of-{max(n):05d}.parquet of one revision, numbered from 00000 "
                       "(re-download the missing ones)")
        out[_SPLIT_OF[hf_split]] = ([shards[i] for i in sorted(shards)], problem)
    return out


def targz_shards(folder: Path) -> Shards:
    """{split: (shards, why incomplete or None)} of the script-era train_images_{0..4}.tar.gz, val_images.tar.gz."""
    out = {}
    for split, names in _TARGZ.items():
        missing = [n for n in names if not (folder / n).is_file()]
        if len(missing) < len(names):
            problem = (f"{folder} holds some of the {split} shards but not {', '.join(missing)}; expected all of "
                       f"{', '.join(names)} (re-download the missing ones)") if missing else None
            out[split] = ([folder / n for n in names if n not in missing], problem)
    return out


def check_name(got: str | None, want: str, where: str) -> None:
    """The image at a listed position must still be the one the listing named there."""
    if original_name(got, where)[0] != want:
        raise ImgnetError(f"{where} is {got!r}, but the listing cached in DATA has {want} there; the shard changed "
                          "since it was listed: rerun with --force")


def download_folder(src: Path, find: Callable[[Path], Shards]) -> Shards | None:
    """The shards of the first of SRC/data and SRC that holds either Hugging Face form, when that form is the
    one `find` (parquet_shards or targz_shards) looks for; None otherwise (the other form first, or none)."""
    for folder in (src / "data", src):
        if not folder.is_dir():
            continue
        for finder in (parquet_shards, targz_shards):
            shards = finder(folder)
            if shards:
                return shards if finder is find else None
    return None


def in_shard(e: Entry) -> str:
    """The shard and the image's name there (image.path, the tar.gz member): <original stem>_<wnid>.<ext>."""
    stem, dot, ext = e.name.rpartition(".")
    return f"{e.path}:{stem or ext}_{e.cls}{dot}{ext if stem else ''}"


def shard_split(split: str, shards: list[Path], problem: str | None, cache_dir, wnids: list[str], scan,
                parallel: bool = False) -> ListedSplit:
    """A split over `shards`; `scan(path, bar)` lists one shard: (entries, skipped). Listings are cached in DATA;
    `parallel`: the shards are listed by one process each (`scan` must then be a module-level function)."""
    def entries():
        if problem:
            raise ImgnetError(problem)
        out, skipped, todo = [], [], []
        for p in shards:
            cache = listing_file(cache_dir, [p])
            got = load_listing(cache, [p])
            if got is None:
                todo.append((p, cache))
            else:
                out += got[1]
                skipped += got[2]
        with tqdm(total=sum(p.stat().st_size for p, _ in todo), unit="B", unit_scale=True, desc=f"list {split}",
                  dynamic_ncols=True, disable=None if todo else True) as bar:
            for (p, cache), (e, s) in zip(todo, _scan_all([p for p, _ in todo], scan, bar, parallel)):
                save_listing(cache, [p], wnids, e, s)
                out += e
                skipped += s
        check_unique((e.name for e in out), f"the {split} shards of {shards[0].parent}")
        return out, skipped
    where = f"{shards[0].parent}/{shards[0].name}" + (f" and {len(shards) - 1} more" if len(shards) > 1 else "")
    return ListedSplit(where, wnids, entries, "the wnid in each image's name", locate=in_shard)


def _scan_all(paths: list[Path], scan, bar, parallel: bool):
    """scan(path, bar) of each shard (names only: the parquet path and label columns, the tar.gz headers).
    The tar.gz shards must be decompressed whole to list them (about 30 GB each): one process per shard."""
    if not parallel or len(paths) < 2 or (os.cpu_count() or 1) < 2:
        yield from (scan(p, bar) for p in paths)
        return
    from imagenet_prep.pool import WorkerPool

    with WorkerPool(min(len(paths), os.cpu_count() or 1), name="list", hint="rerun the same command") as pool:
        for p, listed in zip(paths, pool.imap(scan, paths, window=len(paths), describe=str)):
            bar.update(p.stat().st_size)
            yield listed
