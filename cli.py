"""`imgnet`: thin click commands over the library functions in imagenet_prep and trainer."""

from __future__ import annotations

import functools
import os
import sys

import click

from imagenet_prep.errors import ImgnetError


def _friendly(fn):
    """Turn ImgnetError into a one-line message and exit 2; Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ImgnetError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="imgnet")
def main():
    """ILSVRC2012 to a trained and evaluated AlexNet: prep, pca-stats, train, test."""


# ---------------------------------------------------------------------------------------- prep
@main.command()
@click.option("--src", required=True, type=click.Path(exists=True, file_okay=False), help="ILSVRC2012 download (any supported layout).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the packed splits and label maps.")
@click.option("--split", type=click.Choice(["train", "val", "all"]), default="all")
@click.option("--format", "fmt", type=click.Choice(["lmdb", "hdf5"]), default="lmdb")
@click.option("--encoding", type=click.Choice(["raw", "jpeg"]), default="raw", help="raw: 196,608 bytes per image, decode-free; jpeg: about 10x smaller.")
@click.option("--quality", type=click.IntRange(1, 100), default=90, help="JPEG quality for --encoding jpeg.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes [default: all cores].")
@click.option("--classes", type=click.IntRange(1), default=None, help="Keep the first N classes in label order (renumbered from 0).")
@click.option("--per-class", type=click.IntRange(1), default=None, help="Keep the first N images of each class (sorted by name).")
@click.option("--label-order", type=click.Choice(["sorted", "devkit"]), default="sorted", help="sorted: index 0 = n01440764; devkit: index = ILSVRC2012_ID - 1.")
@click.option("--force", is_flag=True, help="Redo splits that are already complete.")
@_friendly
def prep(src, out, split, fmt, encoding, quality, workers, classes, per_class, label_order, force):
    """Resize ILSVRC2012 to 256x256 and pack it into LMDB or HDF5, with labels.json."""
    from imagenet_prep.prep import PrepConfig, run_prep

    cfg = PrepConfig(src=src, out=out, split=split, format=fmt, encoding=encoding, quality=quality,
                     workers=workers, classes=classes, per_class=per_class, label_order=label_order, force=force)
    report = run_prep(cfg)
    for name, r in report["splits"].items():
        click.echo(f"{name}: {r['written']} written, {len(r['rejected'])} rejected, "
                   f"{len(r['converted'])} converted to RGB, {r['images_per_s']:.0f} images/s")
    click.echo(f"wrote {out}")


# ----------------------------------------------------------------------------------- pca-stats
@main.command("pca-stats")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="Folder written by `imgnet prep`.")
@click.option("--sample", type=click.IntRange(1), default=None, help="Use N train images chosen deterministically [default: all].")
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes [default: all cores].")
@_friendly
def pca_stats(data, sample, workers):
    """Mean image, RGB covariance and its eigendecomposition over the train split."""
    from imagenet_prep.stats import compute_stats

    s = compute_stats(data, sample=sample, workers=workers)
    fmt = lambda v: "(" + ", ".join(f"{x:.4f}" for x in v) + ")"  # noqa: E731
    click.echo(f"{s['n_images']} images: mean_rgb {fmt(s['mean_rgb'])}, eigval {fmt(s['eigval'])}")
    click.echo(f"wrote {os.path.join(data, 'stats.json')} and stats.h5")


if __name__ == "__main__":
    main()
