"""The devkit's classification submission file (devkit_t12/evaluation/demo.val.pred.txt), for the official
scoring tools."""

from __future__ import annotations

import numpy as np

from imagenet_prep.atomic import write_text
from imagenet_prep.errors import ImgnetError


def write_submission(path, names: list[str], top5: np.ndarray, labels: dict) -> int:
    """The devkit's classification format (devkit_t12/evaluation/demo.val.pred.txt): one line per image in
    file-name order, five ILSVRC2012_IDs (1..1000) best first, each followed by a space. Returns the lines."""
    ids = submission_ids(labels, path)
    order = sorted(range(len(names)), key=lambda i: names[i])
    lines = ["".join(f"{ids[int(c)]} " for c in top5[i]) + "\n" for i in order]
    write_text(path, "".join(lines))
    return len(lines)


def submission_ids(labels: dict, path="the submission") -> list[int]:
    """ILSVRC2012_ID of each label index; ImgnetError when the label map lacks them (ImageFolder classes)."""
    ids = [c.get("ilsvrc2012_id") for c in labels["classes"]]
    missing = [c["wnid"] for c, i in zip(labels["classes"], ids) if not isinstance(i, int)]
    if missing:
        raise ImgnetError(f"cannot write {path}: {len(missing)} classes have no ILSVRC2012_ID "
                          f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); the devkit format "
                          "needs ILSVRC2012 wnids as classes")
    if len(ids) < 5:
        raise ImgnetError(f"cannot write {path}: the devkit format needs five guesses per image but the "
                          f"checkpoint has {len(ids)} classes")
    return ids

