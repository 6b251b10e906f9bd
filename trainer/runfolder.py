"""The run folder RUN: config.json (the launch record, plus one record per resume), log.jsonl (one line
per epoch), checkpoints/, curves.png. Only rank 0 writes here."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import socket
import secrets
import sys
import time
from pathlib import Path

import numpy as np
import torch

from imagenet_prep.atomic import os_reason, read_bounded, read_json, write_json, write_text
from imagenet_prep.errors import ImgnetError
from trainer import checkpoint as ck

MAX_RECORD_BYTES = 64 << 20  # config.json, a test report (1000 classes of per_class rows): far below this
MAX_LOG_BYTES = 64 << 20  # log.jsonl: about 500 bytes per epoch
LOCK = ".run.lock"


def read_log(path) -> list[dict]:
    """The epoch lines of a log.jsonl, read with bounds, [] where there is none. Lines that are no JSON object
    with a whole positive `epoch` (a torn last line from a crash, a hand edit, binary junk) are left out;
    ImgnetError for a log that is no regular file or is too large."""
    try:
        raw = read_bounded(path, MAX_LOG_BYTES, "the log.jsonl that `imgnet train` writes")
    except FileNotFoundError:
        return []
    rows = []
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(row, dict) and type(row.get("epoch")) is int and row["epoch"] >= 1:
            rows.append(row)
    return rows


def finite(v) -> float | None:
    """`v` as a float where it is a finite number (not a bool, not NaN, not an integer too big for a float),
    else None: the figures of a log line or a test report edited by hand."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        v = float(v)
    except OverflowError:
        return None
    return v if math.isfinite(v) else None


def write_shared(path, obj) -> None:
    """Write a JSON file that several processes may write at once (two `imgnet test` of one checkpoint): each
    through its own temporary file, fsynced and renamed, so the file is always one writer's whole report."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")  # this writer's own
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)  # the umask applies
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(obj, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ImgnetError(f"cannot write {path} ({os_reason(e)}); expected a writable folder with free space") from e


@contextlib.contextmanager
def hold_run(run: Path):
    """One `imgnet train` per run folder, for the length of the block (RUN made where missing): a second one is
    refused in one line naming the holder's pid; the lock goes with its holder's death (imagenet_prep.inuse's
    pid_lock), so a killed run never blocks its --resume."""
    from imagenet_prep.inuse import pid_lock

    if run.exists() and not run.is_dir():
        raise ImgnetError(f"--out {run} is a file; expected a folder for the run")
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ImgnetError(f"cannot write the run folder {run} ({os_reason(e)}); nothing was started: expected a "
                          "--out folder you can create files in") from None
    with pid_lock(run / LOCK, "`imgnet train`", lambda pid: (
            f"another `imgnet train` (pid {pid}) is running in {run}; wait for it to end, or choose another --out")):
        yield


def read_record(path, what: str) -> dict:
    """A JSON object the run folder holds (config.json, a test report), read with bounds; ImgnetError naming
    the file and `what` was expected when it is missing, unreadable or not an object."""
    try:
        d = read_json(path, MAX_RECORD_BYTES, what)
    except FileNotFoundError:
        raise ImgnetError(f"{path} not found; expected {what}") from None
    if not isinstance(d, dict):
        raise ImgnetError(f"{path} holds a JSON {type(d).__name__}; expected {what} (an object)")
    return d


def _config(run: Path) -> dict | None:
    """RUN/config.json, or None where it is missing or unreadable (a run whose record was lost)."""
    try:
        return read_record(run / "config.json", "the config.json that `imgnet train` writes")
    except ImgnetError:
        return None


def append_line(path: Path, obj: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


def trim_log(path: Path, epochs: int, metrics: dict | None) -> None:
    """On resume the log keeps exactly the epochs the checkpoint holds (a crash may have logged more, or,
    between the checkpoint and the log line, one fewer: `metrics` restores it)."""
    rows = [r for r in read_log(path) if r["epoch"] <= epochs]
    if metrics and not any(r["epoch"] == epochs for r in rows):
        rows.append(metrics)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    try:
        if read_bounded(path, MAX_LOG_BYTES, "the log.jsonl that `imgnet train` writes") == text.encode():
            return  # as it should be: left untouched
    except FileNotFoundError:
        pass
    write_text(path, text)


def environment(device: torch.device, world: int) -> dict:
    import importlib.metadata as md

    try:
        version = md.version("imgnet")
    except md.PackageNotFoundError:
        version = None
    env = {"imgnet": version, "torch": torch.__version__, "numpy": np.__version__,
           "python": platform.python_version(), "platform": platform.platform(), "hostname": socket.gethostname(),
           "device": str(device), "world_size": world, "argv": sys.argv,
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        env.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   gpu=torch.cuda.get_device_name(device), gpus=torch.cuda.device_count())
    if world > 1:
        import torch.distributed as dist

        env["backend"] = dist.get_backend()
    return env


def write_record(run: Path, record: dict, resume: bool) -> None:
    """config.json: the launch record; a resume keeps it and appends its own record under "resumes"
    (so that the command that started the run, and every later one, stay readable)."""
    path = run / "config.json"
    launch = _config(run) if resume else None  # None: the record was lost; this resume's stands in for it
    if launch is None:
        write_json(path, record)
    else:
        write_json(path, {**launch, "resumes": launch.get("resumes", []) + [record]})


def target_epochs(run: Path) -> int | None:
    """The most epochs any launch or resume of the run asked for."""
    rec = _config(run)
    if rec is None:
        return None
    resumes = rec.get("resumes") if isinstance(rec.get("resumes"), list) else []
    asked = [r["epochs"] for r in [rec, *resumes] if isinstance(r, dict) and type(r.get("epochs")) is int]
    return max(asked) if asked else None


def describe(run: Path) -> str:
    rows = read_log(run / "log.jsonl")
    epochs = target_epochs(run)
    done = rows[-1]["epoch"] if rows else 0
    state = "finished" if epochs and done >= epochs else "unfinished"
    return f"{state}: {done} of {epochs if epochs else '?'} epochs"


def launch_settings(run, names, data_given: bool = False) -> dict:
    """The settings `--resume` takes from RUN (`imgnet train --out RUN --resume` alone): those of the launch
    record among `names` (the TrainConfig fields), with --epochs the most any launch or resume asked for.
    ImgnetError where RUN holds no readable record, or one whose DATA is no folder here (moved: --data)."""
    what = "the config.json that `imgnet train` writes (its settings are what --resume continues with)"
    rec = read_record(Path(run) / "config.json", what)
    out = {k: v for k, v in rec.items() if k in names and k not in ("out", "resume")}
    if not data_given and (not isinstance(out.get("data"), str) or not os.path.isdir(out["data"])):
        raise ImgnetError(f"the DATA that {run}/config.json names ({out.get('data')!r}) is not a folder here; "
                          "pass --data DATA to continue the run on it")
    epochs = target_epochs(Path(run))
    if epochs:
        out["epochs"] = epochs
    return out


def prepare(run: Path, resume: bool, settings: dict, runtime: set) -> dict | None:
    """Refuse to overwrite a run; with resume, the checkpoint to continue from, checked against `settings`
    (the TrainConfig as a dict; the `runtime` fields may differ)."""
    if run.exists() and not run.is_dir():
        raise ImgnetError(f"--out {run} is a file; expected a folder for the run")
    last = run / "checkpoints" / "last.pt"
    if not resume:
        if last.exists() or read_log(run / "log.jsonl"):  # a run that stopped before its first epoch is no loss
            raise ImgnetError(f"{run} already holds a run ({describe(run)}); pass --resume to continue it "
                              "or choose another --out")
        return None
    if os.path.lexists(last) and not last.is_file():
        raise ImgnetError(f"--resume: {last} is not a file; expected the checkpoint `imgnet train` writes (the run "
                          "cannot continue without it: start again in another --out; best.pt still serves `imgnet test`)")
    if not last.is_file():
        raise ImgnetError(f"--resume: {last} not found; nothing to continue (start without --resume)")
    ckpt = ck.load_checkpoint(last)
    saved = ck.saved_config(ckpt)
    diff = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if k not in runtime and saved.get(k) != v]
    if diff:
        raise ImgnetError(f"--resume with other settings than {run} was started with ({'; '.join(diff)}); "
                          "repeat the run's options (only --epochs, --workers, --device, --amp, --compile and "
                          "--channels-last may change) or choose another --out")
    return ckpt
