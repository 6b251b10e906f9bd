"""timm's `imagenet-1k-wds` webdataset shards (huggingface.co/datasets/timm/imagenet-1k-wds), read in place.

SRC holds imagenet1k-train-NNNN.tar (1024 shards), imagenet1k-validation-NN.tar (64) and _info.json
({"name", "splits": {split: {"num_samples", "filenames", "shard_lengths", ...}}}). Each shard is a plain,
pre-shuffled tar of samples `<key>.jpg`, `<key>.cls` (ASCII sorted-wnid index) and `<key>.json`
({"filename": "<wnid>/<original name>", "label", "width", "height"}); the key is the original stem.

Listing a split reads every shard's headers and its small .cls and .json members (cached in DATA as the
tar listings are, cache.py); the images are then read by byte range like the members
of the official tars, so records come out in the contract order whatever the shard order.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

from tqdm import tqdm

from imagenet_prep.atomic import parse_json, read_json
from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import sorted_wnids
from imagenet_prep.sources.base import IMAGE_EXTS, Entry, Item, Layout, ListedSplit, Listing
from imagenet_prep.sources.cache import cached_parts
from imagenet_prep.sources.checks import check_count, check_unique
from imagenet_prep.sources.tarscan import list_tar

SPLIT_OF = {"train": "train", "validation": "val"}
SHARD = re.compile(r"imagenet1k-(train|validation)-(\d+)\.tar")
INFO = "_info.json"
MAX_INFO_BYTES = 16 << 20    # timm's _info.json lists 1,088 shards: about 100 KB
MAX_SAMPLE_META = 64 << 10   # a sample's .cls (a number) or .json (filename, label, size): under 200 bytes

# The train images whose bytes the shards do not keep: 22 CMYK JPEGs and one PNG under a .JPEG name that
# the shard writer re-encoded as RGB JPEGs (the widely used list of TensorFlow's build_imagenet_data.py).
# Their records differ from the official tars' within the image policy's tolerance; the report lists them.
REENCODED = frozenset("""
n01739381_1309 n02077923_14822 n02447366_23489 n02492035_15739 n02747177_10752 n03018349_4028
n03062245_4620 n03347037_9675 n03467068_12171 n03529860_11437 n03544143_17228 n03633091_5218
n03710637_5125 n03961711_5286 n04033995_2932 n04258138_17003 n04264628_27969 n04336792_7448
n04371774_5854 n04596742_4225 n07583066_647 n13037406_4650 n02105855_2933""".split())


def find_shards(src: Path) -> dict[str, list[Path]]:
    """{"train": shards, "val": shards} found in SRC, in shard-number order; {} when there are none."""
    found: dict[str, list[tuple[int, Path]]] = {}
    for p in src.iterdir():
        m = SHARD.fullmatch(p.name)
        if m and p.is_file():
            found.setdefault(SPLIT_OF[m[1]], []).append((int(m[2]), p))
    return {s: [p for _, p in sorted(v)] for s, v in found.items()}


def read_info(src: Path) -> dict | None:
    """_info.json, or None where SRC has none; an unreadable one is an error."""
    path = src / INFO
    if not path.exists():
        return None
    expected = ('timm\'s _info.json {"name", "splits": {split: {"num_samples", "filenames", "shard_lengths"}}}')
    try:
        info = read_json(path, MAX_INFO_BYTES, expected)
    except FileNotFoundError:  # a broken link
        return None
    try:
        info["splits"].items()
        return info
    except (KeyError, TypeError, AttributeError) as e:
        raise ImgnetError(f"{path} is not readable ({type(e).__name__}: {e}); expected timm's _info.json "
                          '{"name", "splits": {split: {"num_samples", "filenames", "shard_lengths"}}}') from e


def expected_lengths(src: Path, info: dict | None, split: str, shards: list[Path]) -> tuple[dict[str, int], int | None]:
    """({shard name: samples}, the split's samples) that _info.json declares for the shards of `split`; a listed
    shard missing from SRC is an error (a partial download must not pass for the whole split), and so are
    shard_lengths that are not one count per shard or do not add up to num_samples."""
    if info is None:
        return {}, None
    name = {v: k for k, v in SPLIT_OF.items()}[split]
    entry = info["splits"].get(name)
    if not isinstance(entry, dict):
        return {}, None
    files, lengths, total = entry.get("filenames") or [], entry.get("shard_lengths") or [], entry.get("num_samples")
    if not (isinstance(files, list) and all(isinstance(f, str) for f in files) and isinstance(lengths, list)
            and all(type(n) is int and n >= 0 for n in lengths) and (total is None or type(total) is int)):
        raise ImgnetError(f"{src / INFO}: the {name} entry's filenames, shard_lengths or num_samples are not a list of "
                          "names, a list of counts and a count; expected timm's _info.json")
    have = {p.name for p in shards}
    missing = [f for f in files if Path(f).name not in have]
    if missing:
        raise ImgnetError(f"{src}: {len(missing)} of the {len(files)} {name} shards listed in {INFO} are missing "
                          f"(e.g. {Path(missing[0]).name}); expected all of them (finish the download)")
    extra = sorted(have - {Path(f).name for f in files}) if files else []
    if extra:
        raise ImgnetError(f"{src}: {extra[0]}{f' and {len(extra) - 1} more' if len(extra) > 1 else ''} not among the "
                          f"{len(files)} {name} shards listed in {INFO}; expected only the shards it lists (a shard of "
                          "another download? move it out)")
    if lengths and len(lengths) != len(files):
        raise ImgnetError(f"{src / INFO}: the {name} entry has {len(lengths)} shard_lengths for {len(files)} filenames; "
                          "expected one count per shard (a damaged or edited _info.json)")
    if lengths and total is not None:
        check_count(f"{src / INFO} ({name})", "samples in its shard_lengths", sum(lengths), total,
                    "expected them to add up to num_samples")
    return {Path(f).name: int(n) for f, n in zip(files, lengths)}, total


def _label(shard: str, key: str, cls: bytes | None, meta: bytes | None, wnids: list[str]) -> tuple[str, str]:
    """(record name, wnid) of one sample from its .cls and .json, which must agree."""
    where = f"{shard}: sample {key}"
    index = None
    if cls is not None:
        text = cls.decode("ascii", "replace").strip()
        if not text.isdigit() or len(text) > 9:  # an index of the 1000; longer, int() would refuse or take long
            raise ImgnetError(f"{where}: .cls holds {text[:20]!r}; expected a sorted-wnid index (a damaged shard?)")
        index = int(text)
    filename = None
    if meta is not None:
        try:
            d = parse_json(meta, f"{where}: .json", MAX_SAMPLE_META)
            label, filename = d.get("label"), d.get("filename")
        except (ImgnetError, AttributeError) as e:
            raise ImgnetError(f"{where}: .json is not a JSON object ({e}); expected timm's sample metadata") from e
        if label is not None:
            if index is not None and label != index:
                raise ImgnetError(f"{where}: .cls says {index} but .json says label {label}; expected the same "
                                  "sorted-wnid index in both (a damaged shard?)")
            index = label
    if not isinstance(index, int) or not 0 <= index < len(wnids):
        raise ImgnetError(f"{where}: label {index!r}; expected a sorted-wnid index from 0 to {len(wnids) - 1}")
    wnid = wnids[index]
    if isinstance(filename, str) and "/" in filename and filename.rsplit("/", 2)[-2] != wnid:
        raise ImgnetError(f"{where}: .json filename {filename!r} is not in class {wnid}, its label {index}; "
                          "expected the same class in both (a damaged shard?)")
    name = filename.rsplit("/", 1)[-1] if isinstance(filename, str) and filename else f"{key}.JPEG"
    return name, wnid


def list_shard(path: Path, members: list[tarfile.TarInfo], wnids: list[str], expected: int | None) -> list[Entry]:
    """Entries of one shard's samples, from its members (headers already read)."""
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    for m in members:
        base = m.name.rsplit("/", 1)[-1]
        key, dot, ext = base.partition(".")  # webdataset: the key ends at the first dot of the base name
        samples.setdefault(m.name[:len(m.name) - len(base)] + key, {})[ext.lower() if dot else ""] = m
    if expected is not None:
        check_count(f"{path} (per {INFO})", "samples", len(samples), expected, "re-download the shard")
    out, p = [], str(path)
    with open(path, "rb") as f:
        def read(m):
            if m is None:
                return None
            if m.size > MAX_SAMPLE_META:
                raise ImgnetError(f"{path}: member {m.name!r} is {m.size:,} bytes; expected a sample's .cls or .json "
                                  f"of at most {MAX_SAMPLE_META:,} (a damaged shard?)")
            f.seek(m.offset_data)
            return f.read(m.size)
        for key, parts in samples.items():
            image = next((parts[e] for e in parts if e in IMAGE_EXTS), None)
            if image is None:
                raise ImgnetError(f"{path}: sample {key} has no image (members {', '.join(sorted(parts))}); "
                                  "expected <key>.jpg beside <key>.cls and <key>.json")
            if "cls" not in parts and "json" not in parts:
                raise ImgnetError(f"{path}: sample {key} has no .cls nor .json; expected its label in them")
            name, wnid = _label(p, key, read(parts.get("cls")), read(parts.get("json")), wnids)
            out.append(Entry(name, wnid, p, image.offset_data, image.size))
    return out


def _list_shards(src: Path, split: str, paths: list[Path], wnids: list[str], expected: tuple[dict, int | None]):
    """(classes, entries, skipped) of one split's shards: every tar header, and each sample's .cls and .json;
    `expected`: the samples _info.json declares per shard (checked here) and in all."""
    entries, skipped = [], []
    for p in tqdm(paths, desc=f"list {split} shards", unit="shard", disable=None, leave=False):
        members, sk = list_tar(p)
        skipped += sk
        entries += list_shard(p, members, wnids, expected[0].get(p.name))
    check_unique((e.name for e in entries), f"the {split} shards of {src}")
    return wnids, entries, skipped


def _in_shard(e: Entry) -> str:
    """A webdataset sample: the shard and the sample key (the original stem)."""
    return f"{e.path}:{e.name.rsplit('.', 1)[0]}"


class TimmShards(Layout):
    name = "timm-wds"
    description = "timm's webdataset shards (imagenet1k-{train-NNNN,validation-NN}.tar with _info.json)"

    def detect(self, src: Path) -> bool:
        return bool(find_shards(src))

    def list(self, src: Path, cache_dir=None) -> Listing:
        """Each split's listing (all its shards) is cached as one."""
        info = read_info(src)
        wnids = sorted_wnids()  # .cls is a sorted-wnid index of the 1000
        splits = {}
        for split, paths in find_shards(src).items():
            expected = expected_lengths(src, info, split, paths)

            def entries(split=split, paths=paths, expected=expected):
                part = f"wds-{split}"
                listed = cached_parts(cache_dir, paths, [part],
                                      lambda: {part: _list_shards(src, split, paths, wnids, expected)})[part]
                if expected[1] is not None:  # checked on a cached listing too: _info.json is not in its key
                    check_count(f"{src} ({split} shards, per {INFO})", "samples", len(listed[1]), expected[1],
                                "finish the download")
                return listed[1], list(listed[2])
            where = f"{src}/imagenet1k-{'train' if split == 'train' else 'validation'}-*.tar ({len(paths)} shards)"
            splits[split] = ListedSplit(where, wnids, entries, "the shards' .cls", relabel=split == "val",
                                        locate=_in_shard)
        return Listing(splits)

    def differs(self, item: Item) -> str | None:
        if item.name.rsplit(".", 1)[0] in REENCODED:
            return ("re-encoded in the shards (the official file is a CMYK JPEG or a PNG); its pixels match within "
                    "the image policy's tolerance")
        return None


LAYOUT = TimmShards()
