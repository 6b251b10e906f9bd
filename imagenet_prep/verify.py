"""`imgnet verify DATA`: read every record of every packed split and check it against the CRC-32 written at
prep time (imagenet_prep.store), naming each damaged record. Splits are found and read through the store's
format registry (store.formats), so every registered format is verified the same way.

A copy of DATA to another machine is where bit rot and short copies show up. The scan reads each split once
in storage order with readahead on (the disk's large sequential reads); CRC-32 runs at about 2.7 GB/s, so the
disk sets the pace. A split that cannot be opened at all (a truncated data.mdb, an HDF5 file with the wrong
datasets, a damaged index) is reported with the reason in one line. Splits of store format version 1 carry
no checksums: their records are decoded instead, which finds unreadable records but not changed pixels.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from imagenet_prep.errors import ImgnetError
from imagenet_prep.store import decode_image, formats, name_bytes, open_split, record_crc, split_path
from imagenet_prep.v2 import SPLITS as V2_SPLITS

SPLITS = ("train", "val", "test", *V2_SPLITS)  # every split `imgnet prep` writes


def _problem(split, i: int, data, crc: int | None) -> str | None:
    """Why record i is damaged, or None."""
    if data is None:
        return "record missing"
    if split.encoding == "raw" and len(data) != split.raw_bytes:
        return f"image is {len(data):,} bytes; expected {split.raw_bytes:,} ({split.size}x{split.size}x3)"
    if crc is None:  # format version 1: no checksum, decoding is the only check
        try:
            decode_image(bytes(data), split.encoding, size=split.size)
        except Exception as e:  # noqa: BLE001 - Pillow raises many types for damaged JPEG data
            return f"cannot decode ({type(e).__name__}: {e})"
        return None
    got = record_crc(data, int(split.labels[i]), name_bytes(split.names[i]))
    if got != crc:
        return f"checksum mismatch (crc32 {got:08x}, written {crc:08x})"
    return None


def _verify_split(split, bar) -> dict:
    bad, i = [], -1
    try:
        for i, data, crc in split.scan():
            reason = _problem(split, i, data, crc)
            if reason:
                bad.append({"index": i, "name": split.names[i], "reason": reason})
            bar.update(1)
    except Exception as e:  # noqa: BLE001 - a damaged LMDB page or HDF5 chunk: stop this split, say where
        return {"records": len(split), "checked": None, "bad": bad,
                "error": f"{split.path}: reading stopped at record {i + 1} ({type(e).__name__}: {e})"}
    finally:
        split.close()
    return {"records": len(split), "checked": "crc32" if split.meta.get("checksum") else "decode", "bad": bad,
            "error": None}


def verify_data(data_dir, splits=SPLITS, progress: bool = True) -> dict:
    """Check every record of the packed `splits` in `data_dir`. Returns {"ok": bool, "splits": {name:
    {"records", "checked" ("crc32", or "decode" for format version 1), "bad": [{"index", "name", "reason"}],
    "error": why the split could not be read, or None}}}; ImgnetError when no split is there at all."""
    data_dir = Path(data_dir)
    present = [s for s in splits if split_path(data_dir, s) is not None]
    if not present:
        shown = [formats.expected(s) for s in splits[:2]] + (["another split"] if len(splits) > 2 else [])
        raise ImgnetError(f"no packed split in {data_dir}: expected {' or '.join(shown)} written by `imgnet prep`")
    opened, result = {}, {}
    for name in present:
        try:
            opened[name] = open_split(data_dir, name, readahead=True)
        except ImgnetError as e:  # a damaged file or index: the one-line reason is the answer for this split
            result[name] = {"records": None, "checked": None, "bad": [], "error": str(e)}
    with tqdm(total=sum(map(len, opened.values())), unit="img", desc="verify",
              disable=None if progress else True) as bar:
        for name, split in opened.items():
            result[name] = _verify_split(split, bar)
    result = {name: result[name] for name in present}
    ok = all(r["error"] is None and not r["bad"] for r in result.values())
    return {"ok": ok, "splits": result}
