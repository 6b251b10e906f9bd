"""Small files written atomically and durably: a crash leaves the old file or the new one, never a torn one."""

from __future__ import annotations

import json
import os
from pathlib import Path

from imagenet_prep.errors import ImgnetError


def write_text(path, text: str) -> None:
    """Write `text` to `path` via a temporary file, fsync and rename; ImgnetError naming the path on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise ImgnetError(f"cannot write {path} ({e.strerror or e}); expected a writable folder") from e


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=1) + "\n")
