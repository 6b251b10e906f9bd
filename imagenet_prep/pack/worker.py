"""The worker side of packing: one source image's bytes -> its encoded N x N record (`--size`), or the reason it is
refused. Every packer runs these in the processes of a `pool` (or in its own process with one worker)."""

from __future__ import annotations

import signal

from imagenet_prep import store
from imagenet_prep.pool import WorkerPool
from imagenet_prep.sources.base import read_failure, read_item

_ENCODING: tuple[str, int] = ("raw", 90)  # (encoding, JPEG quality) of this process, set by init_worker
_SIZE = store.SIZE  # the side of the records this process makes (`--size`), set by init_worker


def init_worker(encoding: str, quality: int, size: int = store.SIZE) -> None:
    """Set how this process makes the records (`--encoding`, `--quality`, `--size`)."""
    global _ENCODING, _SIZE
    _ENCODING, _SIZE = (encoding, quality), size


def init_pool_worker(encoding: str, quality: int, size: int = store.SIZE) -> None:
    """init_worker for a pool process, which leaves Ctrl-C to the main process (that stops it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group: the main process stops us
    init_worker(encoding, quality, size)


def process_item(item) -> tuple[bytes | None, str | None, dict | None]:
    """Source item -> (encoded N x N image, None, converted entry or None) or (None, reason, None) when the
    content is rejected. An OSError while reading the source bytes is not a bad image: it raises an
    ImgnetError naming the file and errno, which stops the run (the rerun resumes and writes the image)."""
    from imagenet_prep.resize import BadImage

    try:
        data = read_item(item)
    except BadImage as e:  # a zip member that fails to inflate or its CRC: its bytes are damaged
        return None, e.reason, None
    except OSError as e:
        raise read_failure(item.path, item.name, e) from None
    return process_bytes(data, item.name)


def process_bytes(data: bytes, name: str | None = None) -> tuple[bytes | None, str | None, dict | None]:
    """The source bytes of one image -> (encoded N x N image, None, the report's converted entry or None)
    or (None, reason, None) when its content cannot be used (resize.prepare raises only BadImage for that)."""
    from imagenet_prep.resize import BadImage, prepare

    try:
        p = prepare(data, size=_SIZE, name=name)
    except BadImage as e:
        return None, e.reason, None
    except MemoryError:
        return None, "cannot decode: out of memory (an image over the limits of this machine)", None
    return store.encode_image(p.image, *_ENCODING), None, p.report_entry(name) if name is not None else None


def pool(workers: int, encoding: str, quality: int, size: int = store.SIZE) -> WorkerPool:
    """Workers that a dead one (OOM killer, kill -9) cannot hang: WorkerDied names the cause and the image."""
    return WorkerPool(workers, init_pool_worker, (encoding, quality, size), name="prep",
                      hint="the images committed so far are kept: rerun the same command to continue")
