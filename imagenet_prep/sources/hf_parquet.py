"""The Hugging Face parquet download of ILSVRC/imagenet-1k, read in place (hf.py: what both HF forms share).

SRC or SRC/data/ holds {train,validation}-NNNNN-of-NNNNN.parquet (test-* has no labels and is ignored);
columns `image` {bytes: the original JPEG, path: "<original stem>_<wnid>.JPEG"} and `label` (int64,
sorted-wnid index). Listed from the path and label columns; packed one row group at a time (the unit of
this streamed layout: one worker reads and decodes a row group, the memory of one row group).
"""

from __future__ import annotations

from pathlib import Path

from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import sorted_wnids
from imagenet_prep.sources import base
from imagenet_prep.sources.base import Entry, Layout, Listing, os_failure
from imagenet_prep.sources.checks import check_count
from imagenet_prep.sources.hf import check_name, download_folder, original_name, parquet_shards, shard_split
from imagenet_prep.sources.parquet_pages import chunk_rows


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
    """Columns image: struct<bytes: binary, path: string> and label: an integer, field types included (a path
    typed binary or int would fail later, deep in the listing)."""
    import pyarrow as pa

    schema = pf.schema_arrow
    image = schema.field("image").type if "image" in schema.names else None
    fields = {f.name: f.type for f in image} if image is not None and pa.types.is_struct(image) else {}
    ok = (sorted(schema.names) == ["image", "label"] and pa.types.is_integer(schema.field("label").type)
          and sorted(fields) == ["bytes", "path"]
          and (pa.types.is_binary(fields["bytes"]) or pa.types.is_large_binary(fields["bytes"]))
          and (pa.types.is_string(fields["path"]) or pa.types.is_large_string(fields["path"])))
    if not ok:
        raise ImgnetError(f"{path} has columns {', '.join(f'{f.name}: {f.type}' for f in schema)}; expected "
                          "image: struct<bytes: binary, path: string> and label: int64 (ILSVRC/imagenet-1k)")


def _check_rows(pf, path: Path) -> None:
    """The rows the footer declares are those the pages hold, counted before anything is read: the footer's
    total against its row groups', each row group's against the values the pages of its label and image.path
    columns hold. A row group that declares more rows than the file has bytes is refused first (it would only
    exhaust the memory: each row holds an image)."""
    md, size = pf.metadata, path.stat().st_size
    check_count(str(path), "rows in its row groups", sum(md.row_group(i).num_rows for i in range(md.num_row_groups)),
                md.num_rows)
    try:
        with open(path, "rb") as f:
            for rg in range(md.num_row_groups):
                g, where = md.row_group(rg), f"{path} row group {rg}"
                if g.num_rows > size:
                    raise ImgnetError(f"{where} declares {g.num_rows:,} rows, more than the file's {size:,} bytes "
                                      "can hold; expected a complete shard of ILSVRC/imagenet-1k (a damaged or "
                                      "crafted file)")
                for c in (g.column(i) for i in range(g.num_columns)):
                    if c.path_in_schema in ("label", "image.path"):
                        start = min((o for o in (c.dictionary_page_offset, c.data_page_offset) if o), default=0)
                        check_count(f"{where} column {c.path_in_schema}", "values in its pages",
                                    chunk_rows(f, start, c.total_compressed_size, where), g.num_rows)
    except OSError as e:
        raise os_failure(str(path), e) from e


def _fields(table) -> dict:
    """The image struct's fields as arrays; flatten() keeps a null image null in each field."""
    image = table.column("image").combine_chunks()
    return dict(zip((f.name for f in image.type), image.flatten()))


def _list_parquet(path: Path, wnids: list[str]) -> list[Entry]:
    """Entries (name, wnid, path, row group, row) of every row, from the path and label columns only."""
    pf = _parquet_file(path)
    _check_schema(pf, path)
    _check_rows(pf, path)
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
            entries.append(Entry(name, wnid, p, rg, row))
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


def _scan_parquet(wnids: list[str]):
    def scan(path: Path, bar) -> tuple[list[Entry], list[dict]]:
        entries = _list_parquet(path, wnids)
        bar.update(path.stat().st_size)
        return entries, []
    return scan


class HfParquet(Layout):
    name = "hf-parquet"
    description = ("Hugging Face parquet shards ({train,validation}-NNNNN-of-NNNNN.parquet, in SRC or SRC/data/)")
    streamed = True
    sharded = True
    unit_in_worker = True

    def detect(self, src: Path) -> bool:
        return download_folder(src, parquet_shards) is not None

    def list(self, src: Path, cache_dir=None) -> Listing:
        """An incomplete set of shards is an error when that split is listed, so that a complete split can
        still be prepared."""
        wnids = sorted_wnids()  # index = the `label` column's value
        return Listing({s: shard_split(s, paths, problem, cache_dir, wnids, _scan_parquet(wnids))
                        for s, (paths, problem) in download_folder(src, parquet_shards).items()})

    def read_unit(self, path: str, unit: int, want: dict[int, str]):
        table = read_row_group(path, unit)
        for row in sorted(want):
            where = f"{path} row group {unit} row {row}"
            if row >= len(table):
                raise ImgnetError(f"{where} is missing (the row group has {len(table)} rows); the shard changed since "
                                  "it was listed: rerun with --force")
            ipath, data = table[row]
            check_name(ipath, want[row], where)
            if data is not None and len(data) > base.MAX_IMAGE_BYTES:
                yield row, None, str(base.too_large(len(data)))
            else:
                yield row, data, "no image bytes in the row" if data is None else None


LAYOUT = HfParquet()
