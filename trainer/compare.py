"""`imgnet compare RUN...`: the ablation table of several runs, the way the paper reports them (section 3.3:
LRN "reduces our top-1 and top-5 error rates by 1.4% and 1.2%"), and one plot of their val curves.

Each run is read from its folder: the launch record in config.json (its settings; the settings that leave
the result unchanged, trainer.config.NOT_DEFINING, are ignored), log.jsonl (best val
top-1 error and the top-5 error of that epoch, the one best.pt holds; epochs; images/s) and the test JSONs
of checkpoints/best.pt beside it (`test-best-<view>.json` for the held-out split, `test-best-<split>-<view>.json`
for other splits, `test-best-<split>-no-blacklist-<view>.json`; older runs' `test-<view>.json` and
`test-<split>-<view>.json` too, where the checkpoint they record is best.pt; a report made with
--exclude-<name> counts as split `<split>-no-<name>`, so that its figures never sit in one column with
full-split ones), with the
figures of the label lists of trainer/labelsets where present: the keys `top1_err`, `top5_err`, `n` and
`<set>_top1_err`, `<set>_top5_err`, `<set>_n` (`real_...`), flat or one level down (`{"real": {"top1_err"}}`).
Every figure is also given as its difference to the first run. Every file is read with bounds; a hand-edited
run costs its unreadable lines and figures (or, for a report, one warning line), never a traceback; runs
trained on different DATA (classes, size, label map) are compared with a one-line warning.

    from trainer.compare import compare_runs, format_table, plot_compare
    result = compare_runs(["runs/base", "runs/no-lrn"])   # JSON-ready dict
    print(format_table(result))                          # or markdown=True
"""

from __future__ import annotations

import json
import os
import re
import statistics
from pathlib import Path

from imagenet_prep.errors import ImgnetError
from trainer.config import NOT_DEFINING
from trainer.labelsets import registry as labelsets
from trainer.plot import save_png
from trainer.runfolder import finite, read_log, read_record

# the settings that do not define a run (trainer/config.py), and what the launch record adds beside the
# settings (the parameter count, where validation came from; nested records are skipped as records)
IGNORED = NOT_DEFINING | {"parameters", "val_source"}
_TEST_FILE = re.compile(r"test-(?:(?P<split>.+)-)?(?P<view>center|ten-crop)\.json")
_FIGURE = re.compile(r"(?:(?P<set>\w+)_)?top(?P<k>\d+)_err")  # top1_err, real_top5_err, ...
VIEW_ORDER = ("center", "ten-crop")
_UNPREFIXED = ("original", "ilsvrc2012", "figures", "metrics")  # nested groups of the 2012-label figures


# ------------------------------------------------------------------------------------- reading
def _record(v) -> bool:
    """A nested record (environment, model_kwargs, a list of resume records), not a setting."""
    return isinstance(v, dict) or (isinstance(v, list) and any(isinstance(x, dict) for x in v))


def _plain(v) -> bool:
    """A value a setting can hold: a scalar, or a flat list of scalars (a hand-edited config.json may hold
    anything, nested thousands deep)."""
    scalar = (str, int, float, bool, type(None))
    return isinstance(v, scalar) or (isinstance(v, list) and all(isinstance(x, scalar) for x in v))


def run_settings(config: dict) -> dict:
    """The settings of a run that change its result, in the order of config.json (the launch record, which
    `imgnet train` writes flat; resumes add theirs under "resumes"); `num_classes` from the model."""
    out = {k: v for k, v in config.items() if k not in IGNORED and not _record(v) and _plain(v)}
    kwargs = config.get("model_kwargs")
    if isinstance(kwargs, dict) and _plain(kwargs.get("num_classes", [])):
        out["num_classes"] = kwargs["num_classes"]  # DATA's classes: --classes changes the task
    return out


def _figures(report: dict, nested: bool = True) -> dict:
    """{top1_err, top5_err, n, real_top1_err, real_n, ...} of a test JSON: flat keys, or one level of
    label sets ({"real": {"top1_err", "n"}}, "original" for the 2012 labels); finite numbers only."""
    out = {}
    for key, v in report.items():
        if nested and isinstance(v, dict) and any(_FIGURE.fullmatch(k) for k in v):
            prefix = "" if key in _UNPREFIXED else f"{key}_"
            out.update({prefix + k: x for k, x in _figures(v, nested=False).items()})
        elif (_FIGURE.fullmatch(key) or key == "n" or key.endswith("_n")) and finite(v) is not None:
            out[key] = finite(v)
    return out


def _scores_best(f: Path, report: dict) -> bool:
    """Whether a test JSON in RUN/checkpoints scores best.pt: by the checkpoint it records, else by its name
    (test-<stem>-*.json of another checkpoint beside it, last.pt's, is not best.pt's)."""
    ckpt = report.get("checkpoint")
    if isinstance(ckpt, str) and ckpt:
        return Path(ckpt).stem == "best"
    others = {p.stem for p in f.parent.glob("*.pt")} - {"best"}
    return not any(f.name.startswith(f"test-{stem}-") for stem in others)


def _split_of(name_split: str | None) -> str | None:
    """The split a report's name gives: test-best-<split>-<view>.json, test-<split>-<view>.json (older
    names); None for the held-out split (test-best-<view>.json, test-<view>.json)."""
    if name_split is None or name_split == "best":
        return None
    return name_split[len("best-"):] if name_split.startswith("best-") else name_split


def read_tests(ckdir: Path, warn=None, best_epoch: int | None = None) -> dict[str, dict]:
    """{"<split>/<view>": figures} of the test JSONs of best.pt in RUN/checkpoints (test-best-*.json, and the
    test-<view>.json, test-<split>-<view>.json of older runs; a newer name wins). A report that cannot be read
    is left out, and one of another epoch than `best_epoch` (best.pt moved on since) is kept, each with a line
    to `warn`."""
    tests = {}
    files = sorted(ckdir.glob("test-*.json")) if ckdir.is_dir() else []
    for f in sorted(files, key=lambda f: f.name.startswith("test-best-")):  # older names first: newer win
        m = _TEST_FILE.fullmatch(f.name)
        if not m:
            continue
        try:
            report = read_record(f, "a test report written by `imgnet test`")
        except ImgnetError as e:
            (warn or _ignore)(f"left out: {e}")
            continue
        if not _scores_best(f, report):
            continue  # another checkpoint's (last.pt): not the epoch the table shows
        scored = report.get("epoch")
        if type(scored) is int and best_epoch is not None and scored != best_epoch:
            (warn or _ignore)(f"{f} scores best.pt of epoch {scored}, but best.pt now holds epoch {best_epoch}: "
                              "run `imgnet test` again")
        split = _word(report.get("split")) or _split_of(m["split"]) or "val"
        view = _word(report.get("view")) or m["view"]
        for e in labelsets.exclusions():  # other images than a full-split report: its own columns
            if report.get(f"exclude_{e.name}") is True:
                split = f"{split}-no-{e.name}"
        figures = _figures(report)
        if figures:
            tests[f"{split}/{view}"] = figures
    return tests


def _word(v) -> str | None:
    """A split or view name from a report: a plain word (no "/", which keys the figures), else None."""
    return v if isinstance(v, str) and re.fullmatch(r"[\w.+-]+", v) else None


def _ignore(msg: str) -> None:
    pass


def read_run(path, warn=None) -> dict:
    """One run folder -> {"run", "path", "settings", "epochs", "best_epoch", "images_per_s", "figures",
    "curve", "data"}; figures are fractions: best_val_top1_err, best_val_top5_err, "<split>/<view>/<figure>".
    Every file is read with bounds (trainer.runfolder); log lines and figures that are no finite numbers are
    left out; a test report that cannot be read is left out with a line to `warn`."""
    run = Path(path)
    if not run.is_dir():
        raise ImgnetError(f"run {run} is not a folder; expected a RUN folder written by `imgnet train`")
    config = read_record(run / "config.json", "the config.json that `imgnet train` writes in its RUN folder")
    rows = read_log(run / "log.jsonl")
    scored = [r for r in rows if finite(r.get("val_top1_err")) is not None]
    best = min(scored, key=lambda r: (finite(r["val_top1_err"]), r["epoch"]), default=None)  # best.pt's epoch
    speeds = [finite(r.get("images_per_s")) for r in rows if finite(r.get("images_per_s")) is not None]
    figures = {"best_val_top1_err": finite(best["val_top1_err"]) if best else None,
               "best_val_top5_err": finite(best.get("val_top5_err")) if best else None}
    tests = read_tests(run / "checkpoints", warn, best["epoch"] if best else None)
    for key, figs in tests.items():
        figures.update({f"{key}/{k}": v for k, v in figs.items()})
    return {"run": os.path.normpath(str(path)), "path": str(run.resolve()), "settings": run_settings(config),
            "epochs": max((r["epoch"] for r in rows), default=0), "best_epoch": best["epoch"] if best else None,
            "images_per_s": statistics.median(speeds) if speeds else None,  # median: epoch 1 may compile
            "figures": figures, "tests": sorted(tests), "data": _data_of(config),
            "curve": [{"epoch": r["epoch"], **{k: finite(r.get(k)) for k in ("val_top1_err", "val_top5_err")}}
                      for r in rows]}


def _data_of(config: dict) -> dict:
    """What a run was trained on, as far as its record says: DATA's path, classes and image size, and (runs
    that record it) the label map's digest and the train split's records."""
    kwargs, given = config.get("model_kwargs"), config.get("input")
    ident = config.get("data_identity") if isinstance(config.get("data_identity"), dict) else {}
    out = {"path": config.get("data"), "classes": kwargs.get("num_classes") if isinstance(kwargs, dict) else None,
           "size": given.get("size") if isinstance(given, dict) else None, **ident}
    return {k: v for k, v in out.items() if _plain(v) and not isinstance(v, list) and v is not None}


def data_warning(runs: list[dict]) -> str | None:
    """One line where the runs were trained on different DATA (other classes, image size, label map or train
    images, where both records say): their differences are then not those of their settings alone."""
    keys = ("classes", "size", "labels_sha256", "train_records")
    base = runs[0]["data"]
    other = [r for r in runs[1:] if any(k in base and k in r["data"] and r["data"][k] != base[k] for k in keys)]
    if not other:
        return None

    def says(r):
        d = r["data"]
        return f"{r['run']}: {d.get('path', '?')}, {d.get('classes', '?')} classes, size {d.get('size', '?')}"
    return (f"the runs were trained on different DATA ({'; '.join(says(r) for r in [runs[0], *other])}): their "
            "differences are not those of their settings alone")


# ------------------------------------------------------------------------------------ comparing
def _differs(settings: dict, base: dict) -> dict:
    keys = list(base) + [k for k in settings if k not in base]
    return {k: settings.get(k) for k in keys if settings.get(k, _MISSING) != base.get(k, _MISSING)}


_MISSING = object()


def compare_runs(paths) -> dict:
    """Read the runs and compare each with the first: {"baseline", "figures", "runs": [read_run(...) plus
    "differs" (settings unlike the first run's) and "delta" (each figure minus the first run's)], "warnings"
    (one line each: a test report left out, runs on different DATA)}."""
    paths = list(paths)
    if not paths:
        raise ImgnetError("no runs to compare; expected one or more RUN folders")
    warnings = []
    runs = [read_run(p, warnings.append) for p in paths]
    base = runs[0]
    mixed = data_warning(runs)
    if mixed:
        warnings.append(mixed)
    order = ["best_val_top1_err", "best_val_top5_err"] + _test_figure_order(runs)
    for r in runs:
        r["differs"] = _differs(r["settings"], base["settings"])
        r["delta"] = {k: (r["figures"][k] - base["figures"][k]
                          if r["figures"].get(k) is not None and base["figures"].get(k) is not None else None)
                      for k in order if k in r["figures"]}
    return {"baseline": base["run"], "figures": order, "runs": runs, "warnings": warnings}


def _test_figure_order(runs: list[dict]) -> list[str]:
    """Test figure keys present in any run: val first, then other splits; center before ten-crop; the 2012
    labels before the other label sets; top-1 before top-5."""
    keys = {k for r in runs for k in r["figures"] if k.count("/") == 2 and _FIGURE.fullmatch(k.rsplit("/", 1)[1])}

    def rank(key):
        split, view, fig = key.split("/")
        m = _FIGURE.fullmatch(fig)
        return (split != "val", split, VIEW_ORDER.index(view) if view in VIEW_ORDER else 9, view,
                m["set"] is not None, m["set"] or "", int(m["k"]))
    return sorted(keys, key=rank)


# ------------------------------------------------------------------------------------ the table
def _header(key: str) -> str:
    if key.startswith("best_val_"):
        return f"val top-{_FIGURE.fullmatch(key[len('best_val_'):])['k']}"
    split, view, fig = key.split("/")
    m = _FIGURE.fullmatch(fig)
    label = labelsets.titles().get(f"{m['set']}_", m["set"]) if m["set"] else ""
    return " ".join(x for x in (split if split != "val" else "test", view, label, f"top-{m['k']}") if x)


def _value(v, d, first: bool) -> str:
    if v is None:
        return "-"
    s = f"{100 * v:.2f}"
    return s if first or d is None else f"{s} ({100 * d:+.2f})"


def _setting(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)  # a plain value (run_settings)


def table_rows(result: dict) -> list[list[str]]:
    """The header row and one row per run, as strings: errors in %, differences to the first run in
    percentage points in parentheses."""
    keys = result["figures"]
    head = ["run", "settings", "epochs", *map(_header, keys), "images/s"]
    rows = [head]
    for i, r in enumerate(result["runs"]):
        differs = ", ".join(f"{k}={_setting(v)}" for k, v in r["differs"].items())
        rows.append([r["run"], "(baseline)" if i == 0 else differs or "(same)", str(r["epochs"]),
                     *(_value(r["figures"].get(k), r["delta"].get(k), i == 0) for k in keys),
                     "-" if r["images_per_s"] is None else f"{r['images_per_s']:.0f}"])
    return rows


def format_table(result: dict, markdown: bool = False) -> str:
    rows = table_rows(result)
    note = (f"errors in %, in parentheses the difference to {result['baseline']} in percentage points; val: the "
            "best epoch in log.jsonl (best.pt's); test: the test JSONs beside best.pt")
    if markdown:
        cell = lambda s: s.replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(map(cell, rows[0])) + " |",
                 "|" + "|".join("---" if j < 2 else "---:" for j in range(len(rows[0]))) + "|"]
        lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows[1:]]
        return "\n".join(lines) + f"\n\n{note[0].upper()}{note[1:]}.\n"
    widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:], note]) + "\n"


# ------------------------------------------------------------------------------------- the plot
def plot_compare(result: dict, out) -> Path:
    """One PNG: each run's val top-1 (solid) and top-5 (dashed) error per epoch, in one colour per run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    out = Path(out)
    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, r in enumerate(result["runs"]):
        color = f"C{i % 10}"
        label = r["run"] + ("" if i == 0 else " (" + (", ".join(f"{k}={_setting(v)}" for k, v in
                                                                 r["differs"].items()) or "same") + ")")
        label = label if len(label) <= 100 else label[:99] + "…"  # a legend line, not a page
        for key, style, suffix in (("val_top1_err", "-", "top-1"), ("val_top5_err", "--", "top-5")):
            pts = [(c["epoch"], 100 * c[key]) for c in r["curve"] if c.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), style, color=color, lw=1.5, label=f"{label} {suffix}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs
    ax.set_xlabel("epoch")
    ax.set_ylabel("val error (%)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    ax.set_title("val error: top-1 (solid), top-5 (dashed)", fontsize=10)
    fig.tight_layout()
    return save_png(fig, out)
