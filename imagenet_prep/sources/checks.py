"""Checks every reader applies alike to what a download declares and holds: a count it declares (a parquet
footer's rows, a shard's samples in _info.json, a zip's members) against what is there, a name listed twice,
and an image in both train and val (a leak that would score the net on images it was trained on)."""

from __future__ import annotations

from typing import Callable, Iterable

from imagenet_prep.errors import ImgnetError, shown


def check_count(where: str, what: str, held: int, declared: int, fix: str = "re-download it") -> None:
    """`where` holds as many `what` as it declares, or a one-line error naming both counts."""
    if held != declared:
        raise ImgnetError(f"{where} holds {held:,} {what} but declares {declared:,}; expected the count it declares "
                          f"(a damaged or crafted file: {fix})")


def check_unique(names: Iterable[str], where: str) -> None:
    """Each name once among `names` (one split's images), or a one-line error naming the first repeated one."""
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ImgnetError(f"image {shown(n)} appears twice in {where}; expected each image once (files of two "
                              "downloads or revisions mixed?)")
        seen.add(n)


def image_key(name: str) -> str:
    """What identifies an image across splits: its record name without the extension (the original stem: the
    webdataset key, n01440764_10026, ILSVRC2012_val_00000001)."""
    return name.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def check_no_leak(train: Iterable, val: Iterable, locate: Callable[[str, object], str]) -> None:
    """No image (an Item or Entry: its `name`) both in train and in val; `locate(split, image)` says where each is,
    for the one-line error that names the image and both places. Val's keys are held (50,000), train streamed."""
    in_val = {image_key(i.name): i for i in val}
    for i in train:
        if (twin := in_val.get(image_key(i.name))) is not None:
            raise ImgnetError(f"image {shown(image_key(i.name))} is in both train ({shown(locate('train', i))}) "
                              f"and val ({shown(locate('val', twin))}); expected each image in one split only (a "
                              "train/val leak: remove it from one of them)")
