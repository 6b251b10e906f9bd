"""Training curves from RUN/log.jsonl: loss, and top-1/top-5 error per epoch with the lr drops marked.

Uses matplotlib's object API on the Agg canvas (no pyplot, no display, no global backend switch).
    python -m trainer.plot RUN      # rewrites RUN/curves.png
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from imagenet_prep.atomic import os_reason
from imagenet_prep.errors import ImgnetError
from trainer.runfolder import finite, read_log


def plot_curves(rows: list[dict], out) -> Path:
    """Write a two-panel PNG: train/val loss, and train top-1, val top-1, val top-5 error (in %)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out)
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_err = fig.subplots(1, 2)
    ep = [r["epoch"] for r in rows]

    def series(key, scale=1.0):
        return [None if finite(r.get(key)) is None else finite(r[key]) * scale for r in rows]

    ax_loss.plot(ep, series("train_loss"), "o-", ms=3, label="train")
    if any(r.get("val_loss") is not None for r in rows):
        ax_loss.plot(ep, series("val_loss"), "o-", ms=3, label="val")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_err.plot(ep, series("train_top1_err", 100), "o-", ms=3, label="train top-1")
    ax_err.plot(ep, series("val_top1_err", 100), "o-", ms=3, label="val top-1")
    ax_err.plot(ep, series("val_top5_err", 100), "o-", ms=3, label="val top-5")
    ax_err.set_xlabel("epoch")
    ax_err.set_ylabel("error (%)")
    # dotted line before the first epoch that ran at a new learning rate
    for prev, cur in zip(rows, rows[1:]):
        if cur.get("lr") != prev.get("lr") and finite(cur.get("lr")) is not None:
            for ax in (ax_loss, ax_err):
                ax.axvline(cur["epoch"] - 0.5, color="grey", ls=":", lw=1)
            ax_err.annotate(f"lr {cur['lr']:g}", (cur["epoch"] - 0.5, 1.0), xycoords=("data", "axes fraction"),
                            fontsize=7, color="grey", rotation=90, va="top", ha="right")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if rows:
        best = min((r for r in rows if finite(r.get("val_top1_err")) is not None), key=lambda r: r["val_top1_err"],
                   default=None)
        if best:
            fig.suptitle(f"best val top-1 error {100 * best['val_top1_err']:.2f}% (epoch {best['epoch']})", fontsize=10)
    fig.tight_layout()
    return save_png(fig, out)


def save_png(fig, out) -> Path:
    """`fig` to `out` through a temporary file beside it, renamed; ImgnetError naming `out` (never the
    temporary file, which is removed) where the folder cannot be written."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, out)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ImgnetError(f"cannot write {out} ({os_reason(e)}); expected a writable folder") from None
    return out


def plot_run(run) -> Path:
    """RUN/log.jsonl -> RUN/curves.png."""
    run = Path(run)
    return plot_curves(read_log(run / "log.jsonl"), run / "curves.png")


if __name__ == "__main__":
    print(plot_run(sys.argv[1] if len(sys.argv) > 1 else "."))
