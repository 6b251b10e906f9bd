"""`imgnet`: thin click commands over the library functions in imagenet_prep and trainer."""

from __future__ import annotations

import errno
import functools
import json
import os
import sys

import click

from imagenet_prep.errors import ImgnetError
from imagenet_prep.store import MAX_SIZE, MIN_SIZE, formats as store_formats
from imagenet_prep.v2 import ANY as V2_ANY, SPLITS as V2_SPLITS


def _friendly(fn):
    """Turn ImgnetError, and an OSError from the disk (full, read-only, gone), into a one-line message and
    exit 2; Ctrl-C into exit 130. Every command writes atomically or resumably, so a rerun completes."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ImgnetError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except OSError as e:
            if isinstance(e, BrokenPipeError):  # output piped into a reader that stopped (`| head`)
                sys.exit(1)
            code = errno.errorcode.get(e.errno or 0)
            where = f" on {e.filename}" if e.filename else ""
            click.echo(f"error: {e.strerror or e}{where}" + (f" [{code}]" if code else "") +
                       "; what was completed is kept: fix the disk or free space and rerun", err=True)
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
@click.option("--split", type=click.Choice(["train", "val", "test", "all", V2_ANY, *V2_SPLITS]), default="all", help="test: a CIFAR download's test batch. v2, v2-*: an ImageNetV2 variant in --src, packed as a test split beside train and val and labelled through --out's labels.json (prep ILSVRC2012 into --out first).")
@click.option("--format", "fmt", type=click.Choice(store_formats.names()), default=store_formats.default())
@click.option("--encoding", type=click.Choice(["raw", "jpeg"]), default="raw", help="raw: 196,608 bytes per image, decode-free; jpeg: about 10x smaller.")
@click.option("--quality", type=click.IntRange(1, 100), default=90, help="JPEG quality for --encoding jpeg.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes [default: all cores].")
@click.option("--classes", type=click.IntRange(1), default=None, help="Keep the first N classes in label order (renumbered from 0).")
@click.option("--per-class", type=click.IntRange(1), default=None, help="Keep the first N images of each class (sorted by name).")
@click.option("--label-order", type=click.Choice(["sorted", "devkit"]), default="sorted", help="sorted: index 0 = n01440764; devkit: index = ILSVRC2012_ID - 1. A v2 split follows --out's labels.json.")
@click.option("--force", is_flag=True, help="Redo splits that are already complete.")
@click.option("--val-labels", type=click.Path(exists=True, dir_okay=False), default=None, help="Label a flat val from this file of '<name> <index or wnid>' lines (Caffe's val.txt; index in sorted-wnid order) instead of the ground truth.")
@click.option("--size", type=click.IntRange(MIN_SIZE, MAX_SIZE), default=None, help="Side N of the stored N x N images: shorter side to N with Pillow's LANCZOS filter, central N x N crop; an N x N source image is stored as it is. 32 or 64 of ImageNet is the downsampled ImageNet of Chrabaszcz et al. 2017 up to the filter (they used a box filter). CIFAR needs 32 or less (never upscaled). [default: DATA's size, else 256]")
@click.option("--coarse", is_flag=True, help="CIFAR-100: the 20 coarse labels instead of the 100 fine ones.")
@_friendly
def prep(src, out, split, fmt, encoding, quality, workers, classes, per_class, label_order, force, val_labels, size,
         coarse):
    """Resize ILSVRC2012 (or a CIFAR download) to N x N and pack it into LMDB or HDF5, with labels.json."""
    from imagenet_prep.prep import PrepConfig, run_prep

    cfg = PrepConfig(src=src, out=out, split=split, format=fmt, encoding=encoding, quality=quality,
                     workers=workers, classes=classes, per_class=per_class, label_order=label_order, force=force,
                     val_labels=val_labels, size=size, coarse=coarse)
    report = run_prep(cfg)
    for name in report.packed:  # this run's figures only: a complete split was said to be so (once)
        r = report["splits"][name]
        click.echo(f"{name}: {r['written']} written, {len(r['rejected'])} rejected, "
                   f"{len(r['converted'])} converted to RGB, {r['images_per_s']:.0f} images/s")
    if report.packed:
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


# -------------------------------------------------------------------------------------- verify
@main.command()
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@click.option("--split", type=click.Choice(["all", "train", "val", "test", *V2_SPLITS]), default="all", help="all: every packed split DATA holds.")
@_friendly
def verify(data, split):
    """Read every record of DATA and check it against the checksum written at prep time.

    Exit status: 0 when every record is intact; 1 when any record or split is damaged (each is named
    with the reason); 2 when DATA holds no packed split."""
    from imagenet_prep.verify import SPLITS, verify_data

    r = verify_data(data, SPLITS if split == "all" else (split,))
    for name, s in r["splits"].items():
        for b in s["bad"]:
            shown = b["name"] if b["name"].isprintable() else ascii(b["name"])
            click.echo(f"damaged: {name} record {b['index']} {shown}: {b['reason']}", err=True)
        if s["error"]:
            click.echo(f"damaged: {name}: {s['error']}", err=True)
        if s["records"] is not None:
            click.echo(f"{name}: {s['records']} records checked ({s['checked'] or 'stopped'}), {len(s['bad'])} damaged")
    click.echo("all records intact" if r["ok"] else f"{data} has damaged records: copy them again, or rebuild with "
               "`imgnet prep --force`")
    if not r["ok"]:
        sys.exit(1)


# --------------------------------------------------------------------------------------- train
def _click_type(f):
    """The click type of a settings field (trainer/settings.py metadata): a choice, a number range, a folder."""
    m = f.metadata
    kind = str(f.type)
    if m.get("folder"):
        return click.Path(exists=m["folder"] == "existing", file_okay=False)
    if m["choices"] is not None:
        if kind == "int":
            return click.IntRange(min(m["choices"]), max(m["choices"]))
        return click.Choice(list(m["choices"]))
    if m["low"] is not None or m["high"] is not None:
        rng = click.IntRange if kind.startswith("int") else click.FloatRange
        return rng(m["low"], m["high"], min_open=m["low_open"], max_open=m["high_open"])
    return {"int": click.INT, "float": click.FLOAT}.get(kind, click.STRING)


def options_from(settings_fields, optional=()):
    """Decorator: one click option per field with option metadata (trainer/settings.py), in field order, each
    with the field's name, default, type and help: the settings dataclass is the one definition. The
    `optional` fields are required by the command itself where it needs them."""

    def decorate(fn):
        for f in reversed([f for f in settings_fields if f.metadata.get("option")]):
            m, name = f.metadata, "--" + f.name.replace("_", "-")
            if str(f.type) in ("bool", "bool | None"):  # None: decided later (a device-dependent default)
                flag = {"is_flag": True} if m["flag"] is None else {}  # "--x/--no-x" makes its own pair
                fn = click.option(m["flag"] or name, f.name, **flag, default=f.default, help=m["help"])(fn)
            else:
                fn = click.option(name, f.name, type=_click_type(f),
                                  required=m.get("required", False) and f.name not in optional,
                                  default=None if m.get("required") else f.default, help=m["help"])(fn)
        return fn
    return decorate


def _train_fields():
    from dataclasses import fields

    from trainer.config import TrainConfig

    return fields(TrainConfig)


@main.command()
@options_from(_train_fields(), optional=("data",))  # --resume takes it from RUN
@click.pass_context
@_friendly
def train(ctx, **options):
    """Train AlexNet with the paper's recipe. Many GPUs: torchrun --nproc_per_node N -m cli train ...
    `--out RUN --resume` alone continues RUN with the settings it was started with."""
    from click.core import ParameterSource

    from trainer.runfolder import launch_settings
    from trainer.train import config_for, train as run_train

    # the options the user gave; the model's recipe (trainer/models) and the defaults fill in the rest, or
    # with --resume the run's launch record (the options given are then checked against its checkpoint)
    given = {k: v for k, v in options.items() if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
    if options["resume"]:
        recorded = launch_settings(options["out"], {f.name for f in _train_fields()}, data_given="data" in given)
        given = {**recorded, **given}
    elif options["data"] is None:
        raise click.MissingParameter(ctx=ctx, param_hint="'--data'", param_type="option")
    s = run_train(config_for(**given))
    if not s["main"]:  # under torchrun rank 0 alone reports
        return
    if s.get("finished"):
        click.echo(s["finished"])
        return
    if s["best_epoch"] is not None:
        click.echo(f"best val top-1 error {s['best_val_top1_err']:.4f} at epoch {s['best_epoch']} of {s['epochs']}: "
                   f"{s['checkpoint']}")
    click.echo(f"wrote {options['out']}")


# ---------------------------------------------------------------------------------------- test
def _exclusion_options(fn):
    """--exclude-<name> for each exclusion of trainer/labelsets/registry.py (the blacklist)."""
    from trainer.labelsets.registry import exclusions

    for e in reversed(exclusions()):
        fn = click.option(f"--exclude-{e.name}", f"exclude_{e.name}", is_flag=True, help=e.help)(fn)
    return fn


def _weights_options(fn):
    """--weights and --input: plain weights (trainer/weights.py) in place of --ckpt."""
    fn = click.option("--input", "input_", type=click.Choice(["paper", "torchvision"]), default=None, help="With --weights: the input they were trained on. paper: 0-255 minus DATA's mean; torchvision: [0, 1] pixels minus mean (0.485, 0.456, 0.406) over std (0.229, 0.224, 0.225) [default: the export record's].")(fn)
    return click.option("--weights", type=click.Path(exists=True, dir_okay=False), default=None, help="A plain state dict in place of --ckpt: torch.save(model.state_dict()), torchvision's alexnet-owt-7be5be79.pth (--arch alexnet-owt --input torchvision), a timm checkpoint's 'state_dict', or `imgnet export`'s file (its .json beside it gives --arch and --input).")(fn)


def _model_source(ckpt, weights, input_, arch, data=None):
    """The --ckpt path, or --weights read as trainer.weights.load_weights does; exactly one of them."""
    if (ckpt is None) == (weights is None):
        raise ImgnetError("expected exactly one of --ckpt (a checkpoint of `imgnet train`) and --weights (a plain state dict)")
    if ckpt is not None:
        if input_ is not None:
            raise ImgnetError("--input goes with --weights; a checkpoint records its own input")
        return ckpt
    from trainer.weights import load_weights

    return load_weights(weights, arch=arch, input=input_, data_dir=data)


@main.command("test")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="Folder written by `imgnet prep`.")
@click.option("--ckpt", default=None, type=click.Path(exists=True, dir_okay=False), help="Checkpoint written by `imgnet train`.")
@_weights_options
@click.option("--views", default=None, help="center, ten-crop, or center,ten-crop: both from one ten-view pass (the center figures from its center view) [default: center].")
@click.option("--ten-crop", is_flag=True, help="The same as --views ten-crop: the softmax averaged over the four corner and center crops (224 of 256, or the run's --crop) and their mirror images (section 4.1).")
@click.option("--split", default=None, help="Packed split to evaluate (val, test, v2-matched-frequency, ...); it must be labelled [default: val, or test where DATA has no val (CIFAR)].")
@_exclusion_options
@click.option("--batch-size", type=click.IntRange(1), default=128, help="Images per batch (ten-crop runs 10 inputs per image).")
@click.option("--workers", type=click.IntRange(0), default=None, help="Loader processes [default: none on the CPU, all cores but one on CUDA].")
@click.option("--device", default=None, help="cpu, cuda, cuda:1, ... [default: cuda when available].")
@click.option("--submission", type=click.Path(dir_okay=False), default=None, help="Also write the devkit's submission file (5 ILSVRC2012_IDs per image, file-name order, every image); with two views, from ten-crop. The val split only (the devkit scores the ILSVRC2012 val images, not ImageNetV2's).")
@click.option("--report-dir", type=click.Path(file_okay=False), default=None, help="Folder for the test JSONs (made where missing) [default: the checkpoint's folder].")
@click.option("--amp", type=click.Choice(["off", "bf16"]), default="off", help="bf16: autocast the forward pass on the device.")
@click.option("--arch", default=None, help="The network of --weights; for a checkpoint of a module:callable model: that name again, to allow importing it.")
@_friendly
def test_cmd(data, ckpt, weights, input_, views, ten_crop, split, batch_size, workers, device, submission, report_dir,
             amp, arch, **excluding):
    """Top-1/top-5 error of a checkpoint on a whole split, on the 2012 labels and (ILSVRC2012 val) ReaL;
    writes test-<checkpoint>-<view>.json beside it, e.g. test-best-center.json (test-best-<split>-<view>.json
    for a split other than val), or in --report-dir."""
    from trainer.evaluate import run_test, summary_line
    from trainer.labelsets import figure_table

    exclude = tuple(k[len("exclude_"):] for k, on in excluding.items() if on)
    source = _model_source(ckpt, weights, input_, arch, data)
    r = run_test(data, ckpt or weights, ten_crop=ten_crop, split=split, batch_size=batch_size, workers=workers,
                 device=device, submission=submission, amp=amp, arch=arch, views=views, exclude=exclude,
                 weights=None if ckpt else source, report_dir=report_dir)
    by_view = r["by_view"]
    how = r["view"] if len(by_view) == 1 else f"{' and '.join(by_view)} from one {r['pass']} pass"
    click.echo(f"{r['split']}: {r['n']:,} images, {how}, {r['device']}, {r['images_per_s']:.0f} images/s")
    click.echo(figure_table(by_view, r))
    for view, v in by_view.items():
        sev = v["mistake_severity"]
        click.echo(f"{view}: loss {v['loss']:.4f}, mistake severity " +
                   (f"{sev:.3f} WordNet levels over {v['severity_n']:,} top-1 mistakes" if sev is not None
                    else "n/a (no WordNet hierarchy for these classes)"))
    for c in r["confusions"][:3]:
        click.echo(f"  confused {c['count']:>5}x  {c['true_words']} -> {c['pred_words']}  ({r['view']})")
    for v in by_view.values():
        click.echo(f"wrote {v['report_path']}")
    if submission:
        note = "" if r["submission_lines"] == 50_000 else "; the devkit scores all 50,000 val images"
        click.echo(f"wrote {r['submission_path']} ({r['submission_lines']:,} lines, {r['submission_view']}{note})")
    click.echo(json.dumps(summary_line(r)))


# ------------------------------------------------------------------------------------- predict
@main.command()
@click.option("--ckpt", default=None, type=click.Path(exists=True, dir_okay=False), help="Checkpoint written by `imgnet train`.")
@_weights_options
@click.option("--data", default=None, type=click.Path(exists=True, file_okay=False), help="With --weights: DATA's labels.json and, for --input paper, its mean (stats.json, stats.h5) [default: the export record's, else the 1000 ILSVRC2012 classes in sorted-wnid order].")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--ten-crop", is_flag=True, help="Average the softmax of the ten views [default: center crop].")
@click.option("--topk", type=click.IntRange(1), default=5, help="Classes to list per image, most probable first.")
@click.option("--device", default=None, help="cpu, cuda, ... [default: cuda when available].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list (one object per image) instead of text.")
@click.option("--arch", default=None, help="The network of --weights; for a checkpoint of a module:callable model: that name again, to allow importing it.")
@_friendly
def predict(ckpt, weights, input_, data, images, ten_crop, topk, device, as_json, arch):
    """Top-5 (--topk K: top-K) classes of image files (any format Pillow reads, any size or colour mode).

    Exit status: 0 when every image was classified; 1 when some could not be read or decoded (each is
    reported with its reason, the others are still classified); 2 for a bad checkpoint."""
    import json

    from trainer.evaluate import predict as run_predict

    results = run_predict(_model_source(ckpt, weights, input_, arch, data), list(images), ten_crop=ten_crop,
                          device=device, arch=arch, topk=topk)
    failed = [r for r in results if "error" in r]
    if as_json:
        click.echo(json.dumps(results, indent=1))
    else:
        for r in results:
            if "error" in r:
                continue
            click.echo(r["file"] + (f"  (converted from {r['from_mode']})" if r["from_mode"] else ""))
            for t in r["top"]:
                click.echo(f"  {t['rank']}. {t['prob']:6.4f}  {t['wnid']}  {t['words']}")
    for r in failed:
        click.echo(f"error: {r['file']}: {r['error']}", err=True)
    if failed:
        sys.exit(1)


# -------------------------------------------------------------------------------------- export
@main.command()
@click.argument("ckpt", type=click.Path(exists=True, dir_okay=False))
@click.option("--to", "to", required=True, type=click.Path(dir_okay=False), help="The weights file to write; its record goes beside it with the suffix .json.")
@click.option("--format", "fmt", type=click.Choice(["pt", "onnx"]), default=None, help="pt: the plain state dict (torchvision's keys for alexnet-owt); onnx: the network (the onnx extra) [default: onnx for a .onnx name, else pt].")
@click.option("--arch", default=None, help="For a checkpoint of a module:callable model: that name again, to allow importing it.")
@_friendly
def export(ckpt, to, fmt, arch):
    """A checkpoint's weights as a plain state dict or ONNX, with a JSON record beside them (arch, settings,
    input convention, labels)."""
    from trainer.export import export as run_export

    r = run_export(ckpt, to, fmt=fmt, arch=arch)
    click.echo(f"wrote {r['path']} ({r['format']}, {r['bytes']:,} bytes) and {r['record']}")


# ---------------------------------------------------------------------------------------- demo
@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="demo", help="Folder for the source, DATA and RUN.")
@click.option("--classes", type=click.IntRange(2, 10), default=4)
@click.option("--epochs", type=click.IntRange(1), default=6)
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes [default: all cores].")
@_friendly
def demo(out, classes, epochs, workers):
    """Make a small ILSVRC2012-shaped source, then prep, pca-stats, train and test --ten-crop on it."""
    from trainer.demo import DemoConfig, run_demo

    r = run_demo(DemoConfig(out=out, classes=classes, epochs=epochs, workers=workers))
    click.echo(f"top-1 error {r['test']['top1_err']:.3f}, top-5 error {r['test']['top5_err']:.3f} "
               f"(ten-crop, {r['test']['n']} val images, {classes} classes) in {r['seconds']:.0f} s")


# ------------------------------------------------------------------------------------- figure1
def _lrs(ctx, param, value):
    try:
        return tuple(float(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}; expected comma-separated learning rates, e.g. 0.001,0.003,0.01")


@main.command()
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="CIFAR-10 as `imgnet prep` (--size 32) and `imgnet pca-stats` wrote it.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the run folders (<act>-lr<lr>/), figure1.json and figure1.png.")
@click.option("--lrs", default="0.001,0.003,0.01", callback=_lrs, help="Constant learning rates each net tries; each picks its own. A x3 grid from Caffe's 0.001 for this net upwards (the reference runs found 0.003 best for both).")
@click.option("--sweep-epochs", type=click.IntRange(1), default=2, help="Epochs each rate trains; the lowest training error after them wins and its run goes on.")
@click.option("--target", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.25, help="Training error rate over an epoch to reach (the paper's 25%).")
@click.option("--max-epochs", type=click.IntRange(1), default=40, help="Cap per net. tanh needs about 45 epochs on ../shared/data/cifar10 by the reference runs: a lower cap gives a lower bound on the ratio.")
@click.option("--jobs", type=click.IntRange(1, 2), default=1, help="2: the relu and tanh nets side by side in two processes, one torch thread each by default. On 2 cores: faster while other work shares the cores; on idle cores --jobs 1 (2 threads) is, since tanh trains on alone for most of the run.")
@click.option("--threads", type=click.IntRange(1), default=None, help="Torch threads per net [default: torch's own with --jobs 1, 1 with --jobs 2]. 1 where other work shares the cores: 2 threads of a busy 2-core machine ran 3x slower than 1.")
@click.option("--workers", type=click.IntRange(0), default=0, help="Loader processes per run (0: in this process).")
@click.option("--channels-last/--no-channels-last", default=True, help="NHWC tensors: the same function, faster steps on CPUs (about 0.7x the time here).")
@click.option("--device", default="auto", help="auto (cuda when available), cpu, cuda, ...")
@click.option("--seed", type=int, default=0, help="Weights and batch order, the same for every run.")
@click.option("--force", is_flag=True, help="Write figure1.json/png again over a finished one; the run folders continue where they stand.")
@_friendly
def figure1(data, out, lrs, sweep_epochs, target, max_epochs, jobs, threads, workers, channels_last, device, seed, force):
    """The paper's Figure 1: epochs to 25% training error on CIFAR-10, ReLU against tanh, in cuda-convnet's
    18pct net without response normalisation, weight decay, dropout or augmentation ("no regularization of
    any kind"), momentum 0.9, batch 100, each net at its own constant learning rate picked by a short sweep.
    A rerun continues the run folders."""
    from trainer.figure1 import Figure1Config, ratio_text, run_figure1

    r = run_figure1(Figure1Config(data=data, out=out, lrs=lrs, sweep_epochs=sweep_epochs, target=target,
                                  max_epochs=max_epochs, jobs=jobs, threads=threads, workers=workers,
                                  channels_last=channels_last, device=device, seed=seed, force=force))
    for act, n in r["nets"].items():
        click.echo(f"{act}: lr {n['lr']:g}, " + (f"training error {n['train_top1_err']:.4f} in epoch {n['epochs']}"
                   if n["reached"] else f"{n['train_top1_err']:.4f} after {n['epochs']} epochs (target not reached)"))
    click.echo(f"tanh/ReLU epochs to {target:g}: {ratio_text(r)} (paper: 6x); {r['wall_seconds']:.0f} s")
    click.echo(f"wrote {os.path.join(out, 'figure1.json')} and figure1.png; compare the runs: imgnet compare {out}/*/")


# ------------------------------------------------------------------------------------- compare
@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON (every figure, setting and val curve).")
@click.option("--markdown", is_flag=True, help="Print a Markdown table (for papers and READMEs).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Also write a PNG overlaying the runs' val curves.")
@_friendly
def compare(runs, as_json, markdown, plot):
    """Ablation table of RUN folders: settings that differ from the first run, best val and test errors
    (ten-crop and ReaL where tested) with their difference to the first run, epochs, images/s."""
    from trainer.compare import compare_runs, format_table, plot_compare

    if as_json and markdown:
        raise ImgnetError("--json and --markdown exclude each other; expected at most one of them")
    result = compare_runs(runs)
    for line in result["warnings"]:
        click.echo(f"warning: {line}", err=True)
    click.echo(json.dumps(result, indent=1) if as_json else format_table(result, markdown=markdown), nl=as_json)
    if plot:
        click.echo(f"wrote {plot_compare(result, plot)}", err=as_json)  # stdout stays pure JSON


if __name__ == "__main__":
    main()
