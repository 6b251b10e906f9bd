"""`imgnet predict`: the top-5 (or top-k) classes of any image file, prepared with prep's resize policy."""

from __future__ import annotations

import numpy as np
import torch

from imagenet_prep.errors import ImgnetError
from trainer import checkpoint as ck
from trainer.amp import autocast
from trainer.eval.mistakes import class_names
from trainer.eval.report import default_device
from trainer.eval.views import VIEWS, average_views, eval_views
from trainer.weights import eval_transform


def predict(ckpt, images: list, ten_crop: bool = False, device: str | None = None, topk: int = 5,
            batch_images: int = 16, arch: str | None = None) -> list[dict]:
    """`imgnet predict`: classify image files of any size and colour mode, prepared with prep's resize
    policy at the size the checkpoint's model was trained on (shorter side N, central N x N, RGB; N = 256 for
    ImageNet), center crop or the ten views at the checkpoint's crop.

    `ckpt`: a checkpoint path or a loaded checkpoint dict; `topk`: classes per image (at most all of them).
    Returns one dict per image, in input order:
    {"file", "from_mode", "top": [{"rank", "index", "wnid", "words", "prob"}...]} or, for a file that cannot
    be read or decoded, {"file", "error": reason}; one bad file never stops the others."""
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ImgnetError(f"topk={topk!r}; expected a whole number of classes >= 1")
    ckpt_path = ckpt if not isinstance(ckpt, dict) else "checkpoint"
    if not isinstance(ckpt, dict):
        ckpt = ck.load_checkpoint(ckpt, map_location="cpu")
    ck.check_labels(ckpt, ckpt_path)
    device = torch.device(device or default_device())
    classify = _Classifier(ckpt, device, arch, topk)
    size, crop = ck.input_geometry(ckpt)
    results: list[dict] = [None] * len(images)  # type: ignore[list-item]
    pending: list[tuple[int, np.ndarray]] = []  # (position, uint8 (V, crop, crop, 3))
    for pos, f in enumerate(images):
        results[pos], img = read_image(f, size)
        if img is None:
            continue
        pending.append((pos, eval_views(img, ten_crop, crop)))
        if len(pending) >= batch_images:
            classify(pending, results)
    classify(pending, results)
    return results


def read_image(f, size: int = 256) -> tuple[dict, np.ndarray | None]:
    """({"file", "from_mode"}, uint8 (size, size, 3)) of an image file, or ({"file", "error"}, None)."""
    from imagenet_prep.resize import BadImage, prepare_image

    try:
        with open(f, "rb") as fh:
            data = fh.read()
        img, from_mode = prepare_image(data, size)
    except BadImage as e:
        return {"file": str(f), "error": f"cannot decode: {e}"}, None
    except OSError as e:
        return {"file": str(f), "error": f"cannot read: {e.strerror or e}"}, None
    return {"file": str(f), "from_mode": from_mode}, img


class _Classifier:
    """A checkpoint's model with its input transform: batches of prepared views -> each image's top k."""

    def __init__(self, ckpt: dict, device: torch.device, arch: str | None, topk: int):
        self.wnids, self.words = class_names(ckpt["labels"])
        self.device = device
        self.model = ck.model_from_checkpoint(ckpt, device=str(device), arch=arch)
        self.transform = eval_transform(ckpt)  # the checkpoint's input convention (trainer/weights.py)
        self.k = min(topk, len(self.wnids))

    def __call__(self, pending: list, results: list) -> None:
        """Classify the pending (position, views) images into `results[position]["top"]`; empties `pending`."""
        if not pending:
            return
        crops = np.concatenate([v for _, v in pending])  # uint8 (m * views, crop, crop, 3)
        views, m = pending[0][1].shape[0], len(pending)
        tops, lefts, flips = self.transform.geometry("ten" if views == VIEWS else "center", m)
        x = self.transform(torch.from_numpy(crops).to(self.device), tops, lefts, flips)  # no lighting at test time
        with torch.inference_mode(), autocast("off", self.device.type):
            logits = self.model(x)
        probs = average_views(logits, views).exp().cpu()
        p, idx = probs.topk(self.k, dim=1)
        for (pos, _), pr, ix in zip(pending, p.tolist(), idx.tolist()):
            results[pos]["top"] = [{"rank": r + 1, "index": i, "wnid": self.wnids[i], "words": self.words[i],
                                    "prob": q} for r, (q, i) in enumerate(zip(pr, ix))]
        pending.clear()
