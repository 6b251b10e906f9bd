"""Packed splits: the record codecs and checksums (records), the format registry (formats), the staging
writer every format is written through (writer), the reader (reader: `open_split`), and one module per
format (lmdb, hdf5). The names other code imports from `imagenet_prep.store` are re-exported here.

    from imagenet_prep.store import formats
    formats.names()                        # ("lmdb", "hdf5"): the --format choices
    fmt = formats.get("hdf5")              # path, staging_path, finalize, open, disk_bytes, ...
"""

from imagenet_prep.store import formats
from imagenet_prep.store.records import (CHECKSUM, ENCODINGS, FORMAT_VERSION, IMAGE_SHAPE, MAX_META_BYTES,
                                         MAX_NAME_BYTES, MAX_SIZE, MIN_SIZE, RAW_BYTES, READABLE_VERSIONS, SIZE,
                                         check_index, check_labels, check_meta, decode_image, encode_image,
                                         estimate_bytes_per_image, image_shape, index_crc, join_names, meta_size,
                                         name_bytes, parse_meta, raw_bytes, record_crc, split_names)
from imagenet_prep.store.reader import Record, Split, check_holds, open_split, split_meta, split_path
# the registry line: the built-in formats, each registered when imported, in this order (the first is the
# default; split_path prefers the first complete one). A new format is one module here and its name on this line.
from imagenet_prep.store import lmdb, hdf5  # isort: skip
from imagenet_prep.store.lmdb import check_env
from imagenet_prep.store.hdf5 import lmdb_to_hdf5
from imagenet_prep.store.writer import LmdbWriter, parse_progress, progress_of, write_split

__all__ = [
    "CHECKSUM", "ENCODINGS", "FORMAT_VERSION", "IMAGE_SHAPE", "MAX_META_BYTES", "MAX_NAME_BYTES", "MAX_SIZE",
    "MIN_SIZE", "RAW_BYTES", "READABLE_VERSIONS", "SIZE", "LmdbWriter", "Record", "Split", "check_env",
    "check_holds", "check_index", "check_labels", "check_meta", "decode_image", "encode_image",
    "estimate_bytes_per_image", "formats", "image_shape", "index_crc", "join_names", "lmdb_to_hdf5", "meta_size",
    "name_bytes", "open_split", "parse_meta", "parse_progress", "progress_of", "raw_bytes", "record_crc", "split_meta",
    "split_names", "split_path", "write_split",
]
