"""The four official CIFAR downloads (Krizhevsky 2009) as source layouts, one per download kind, read in place
through `imagenet_prep.cifar_files` (which reads the python batches with the restricted unpickler,
`safe_pickle`: a batch asking for anything but the format's content is refused, naming the file and what it
asked for, and nothing runs).

SRC is a folder holding `cifar-10-python.tar.gz`, `cifar-100-python.tar.gz`, `cifar-10-binary.tar.gz` or
`cifar-100-binary.tar.gz`, or the folder extracted from one (`cifar-10-batches-py/`, `cifar-100-python/`,
`cifar-10-batches-bin/`, `cifar-100-binary/`), or that extracted folder itself. Splits: `train` (the training
batches) and `test` (the test batch: the download's held-out split, not ImageNet's val). Class names come from
the download's meta (`batches.meta`, `meta`, `batches.meta.txt`, `fine_label_names.txt`); CIFAR-100 gives its
100 fine labels, or its 20 coarse ones with the `coarse` option (`imgnet prep --coarse`). The official class
names are in sorted order, so the label indices of labels.json are the download's own label numbers.

Records keep the download's order (`in_listed_order`). An item names its batch file as its unit (Item.offset:
the file's index among the download's batch files) and its record index in that file (Item.size). The layout
is streamed, one unit per worker: a python batch is one pickle, read whole to get any record of it, and a
.tar.gz is one gzip stream; a worker reads one batch file and turns each wanted record into a lossless PNG of
its 32x32 pixels, so that the image policy stores it as it is at `--size 32` (raw encoding: the download's
pixels bit for bit). A kill loses at most the batches in flight: each batch is committed whole.
"""

from __future__ import annotations

import io
from pathlib import Path

from imagenet_prep import cifar_files
from imagenet_prep.errors import ImgnetError
from imagenet_prep.sources.base import Entry, Layout, ListedSplit, Listing, shown

SPLITS = cifar_files.SPLITS  # ("train", "test")


def png(image) -> bytes:
    """uint8 (32, 32, 3) RGB -> a PNG file of exactly those pixels (lossless; the policy decodes it by content)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class CifarLayout(Layout):
    """One of the four CIFAR downloads (cifar_files.LAYOUTS), as an archive or its extracted folder."""

    streamed = True
    unit_in_worker = True   # a unit is one batch file: at most 50,000 records, about 150 MB of pixels
    in_listed_order = True  # the download's order
    native_size = cifar_files.SIDE  # 32: prep never upscales them

    def __init__(self, spec: cifar_files.Layout):
        self.spec = spec
        self.name = spec.key
        self.options = ("coarse",) if spec.num_classes == 100 else ()
        self.description = (f"{spec.archive} or its extracted {spec.folder}/ (CIFAR-{spec.num_classes}, "
                            f"{spec.format} batches: splits train and test; needs --size 32 or less)")

    def _download(self, src) -> cifar_files.CifarDownload | None:
        d = cifar_files.find(src)  # CIFAR-10 in both formats gives the python one (it has file names)
        return d if d is not None and d.layout == self.spec else None

    def detect(self, src: Path) -> bool:
        return self._download(src) is not None

    def files(self) -> tuple[str, ...]:
        """The download's batch files; an item's unit is its file's index here."""
        return self.spec.train + self.spec.test

    def list(self, src: Path, cache_dir=None, coarse: bool = False) -> Listing:
        d = self._download(src)
        classes = d.classes(coarse)
        meta = self.spec.meta[1 if coarse and self.spec.format == "binary" else 0]
        kind = "coarse" if coarse else "fine" if self.spec.num_classes == 100 else "class"
        return Listing({s: ListedSplit(f"{d.path} ({s})", classes, lambda s=s: self._entries(d, s, coarse, classes),
                                       f"{kind} labels of {d.path.name}, class names from {meta}",
                                       locate=self.locate)
                        for s in SPLITS})

    def _entries(self, d: cifar_files.CifarDownload, split: str, coarse: bool, classes: list[str]):
        """(entries in the download's order, nothing skipped) of one split: every batch file is read once."""
        entries, files = [], self.files()
        with d:
            for file in d.batch_files(split):
                unit = files.index(file)
                entries += [Entry(name, classes[label], str(d.path), unit, pos)
                            for pos, (name, label, _) in enumerate(d.batch(split, file, coarse))]
        return entries, []

    def locate(self, entry: Entry) -> str:
        """Where a record is: `<download>:<batch file>[<index>]`."""
        return f"{entry.path}:{self.files()[entry.offset]}[{entry.size}]"

    def read_unit(self, path: str, unit: int, want: dict[int, str]):
        file = self.files()[unit]
        split = "train" if file in self.spec.train else "test"
        start, last = min(want), max(want)
        with cifar_files.CifarDownload(path, self.spec) as d:
            for pos, (name, _, image) in enumerate(d.batch(split, file, start=start), start=start):
                if pos in want:
                    if name != want[pos]:
                        raise ImgnetError(f"{path}: record {pos} of {file} is {shown(name)}, listed as "
                                          f"{shown(want[pos])}; the download changed since it was listed: rerun "
                                          "with --force")
                    yield pos, png(image), None
                if pos >= last:
                    return
        raise ImgnetError(f"{path}: {file} ends before record {last}, which was listed; the download changed since "
                          "it was listed: rerun with --force")


LAYOUTS = tuple(CifarLayout(spec) for spec in cifar_files.LAYOUTS)
