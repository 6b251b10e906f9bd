"""The store-format seam: what a format of packed splits must do (`StoreFormat`) and the registry of formats
(`register`, `get`, `names`), which the reader (`open_split`), prep, verify and the CLI read instead of
naming a format.

Every format is written through the same crash-safe staging writer (`store.LmdbWriter`: one LMDB transaction
per commit, resumable after a kill); `finalize` then turns the complete staged split into the format's own
file. A format with no crash consistency of its own (HDF5) is converted in one pass to `<file>.tmp`, synced
and renamed into place, so a kill during conversion only means converting again. To add a format: one module
with a `StoreFormat` subclass (`open` returning a `store.Split` subclass, `read_meta`, `convert`) and one
line, `formats.register(MyFormat())`, run when that module is imported (the built-ins are imported by
`imagenet_prep/store/__init__.py`).
"""

from __future__ import annotations

import os
from pathlib import Path

from imagenet_prep.atomic import os_reason
from imagenet_prep.errors import ImgnetError


class StoreFormat:
    """One way of keeping a packed split on disk, registered under `name`."""

    name = ""        # the --format value, meta["format"] and Split.format
    title = ""       # in messages: "HDF5"
    suffix = ""      # the split lives at DATA/<split><suffix>
    folder = False   # the split is a folder (shown as train.lmdb/)
    staged = True    # converted from the staging LMDB by `convert`; False: the staging LMDB is the split itself

    # ------------------------------------------------------------------------------- where it lives
    def path(self, data_dir, split: str) -> Path:
        return Path(data_dir) / f"{split}{self.suffix}"

    def staging_path(self, data_dir, split: str) -> Path:
        """The LMDB a run writes (and resumes) before `finalize`."""
        if not self.staged:
            return self.path(data_dir, split)
        return Path(data_dir) / f".{split}{self.suffix}.staging.lmdb"

    def temp_path(self, final: Path) -> Path:
        """Where `finalize` converts to before the rename into `final`."""
        return final.with_name(final.name + ".tmp")

    def leftovers(self, data_dir, split: str) -> list[Path]:
        """Every path a run of this format may leave for `split`: the split, its staging LMDB, a conversion's
        temporary file (what `imgnet prep --force` removes)."""
        final = self.path(data_dir, split)
        paths = [final, self.staging_path(data_dir, split)] + ([self.temp_path(final)] if self.staged else [])
        return list(dict.fromkeys(paths))

    def shown(self, split: str) -> str:
        """The split's file name as messages show it: train.lmdb/, train.h5."""
        return f"{split}{self.suffix}{'/' if self.folder else ''}"

    # ----------------------------------------------------------------------------------- reading
    def present(self, path: Path) -> bool:
        """Something is at `path` that `open` should read, or refuse by name."""
        return path.exists()

    def complete(self, path: Path) -> bool:
        """Whether the split at `path` is finished, as cheaply as can be told (used only where two formats
        of one split are present: a complete one wins). A converted file is renamed into place only once
        whole, so by default it is."""
        return True

    def read_meta(self, path: Path) -> dict:
        """The split's metadata without opening it for reading; any exception means: not a complete split."""
        raise NotImplementedError

    def open(self, path: Path, readahead: bool = False):
        """The reader of the split at `path` (a store.Split subclass), its metadata and index checked
        (ImgnetError naming what is wrong). `readahead`: one pass in storage order follows."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------- writing
    def disk_bytes(self, to_write: int, whole: int, per_image: int) -> int:
        """Peak disk use of finishing a split: the `to_write` images still to stage, plus, for a staged
        format, the converted copy of the `whole` split beside the staging LMDB."""
        return (to_write + (whole if self.staged else 0)) * per_image

    def disk_note(self) -> str:
        return f" (staged, then {self.title})" if self.staged else ""

    def finalize(self, staging, final: Path, meta: dict, progress=None) -> None:
        """Turn the complete staged split (a store.LmdbWriter whose `finish` returned `meta`) into `final`,
        atomically: `convert` to the temporary path, fsync, rename. A full or read-only disk is an ImgnetError naming `final`
        and leaves no temporary file; the staged split is kept, so a rerun converts again. `progress`: an
        object with `update(n)` (a tqdm bar), advanced once per record. Nothing to do for an unstaged format;
        the caller removes the staging LMDB when it is not `final`."""
        if not self.staged:
            return
        tmp = self.temp_path(Path(final))
        try:
            self.convert(staging, tmp, meta, progress)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except (OSError, RuntimeError, ValueError) as e:  # h5py reports some failed writes as Runtime/ValueError
            _remove_quietly(tmp)
            raise ImgnetError(f"cannot write {final} ({os_reason(e)}); the staged split {staging.path} is kept: "
                              "free some space (or make the folder writable) and rerun the same command") from e
        except BaseException:  # ImgnetError from a bad staged record, Ctrl-C
            _remove_quietly(tmp)
            raise

    def convert(self, staging, tmp: Path, meta: dict, progress) -> None:
        """Write the split as one file at `tmp` from `staging.scan()` (each record checked against its CRC-32
        on the way), storing `meta` with it."""
        raise NotImplementedError


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # a read-only disk (where none could be created anyway)
        pass


# ------------------------------------------------------------------------------------- registry
_FORMATS: dict[str, StoreFormat] = {}  # in registration order: the order split_path prefers


def register(fmt: StoreFormat) -> StoreFormat:
    """Add `fmt` to the registry under `fmt.name`; returns it. ValueError when the name is taken."""
    if not isinstance(fmt, StoreFormat) or not fmt.name or not fmt.suffix:
        raise ValueError(f"{fmt!r} is not a StoreFormat with a name and a suffix")
    if fmt.name in _FORMATS:
        raise ValueError(f"store format {fmt.name!r} is registered already")
    _FORMATS[fmt.name] = fmt
    return fmt


def unregister(name: str) -> None:
    _FORMATS.pop(name, None)


def get(name: str) -> StoreFormat:
    """The registered format `name`; ImgnetError listing the formats there are."""
    try:
        return _FORMATS[name]
    except (KeyError, TypeError):
        raise ImgnetError(f"unknown store format {name!r}; expected one of {', '.join(names())}") from None


def names() -> tuple[str, ...]:
    """The registered format names, for `--format` choices."""
    return tuple(_FORMATS)


def default() -> str:
    """The format `imgnet prep` writes unless told otherwise: the first registered (LMDB)."""
    return next(iter(_FORMATS))


def registered() -> tuple[StoreFormat, ...]:
    return tuple(_FORMATS.values())


def paths_of(data_dir, split: str) -> list[Path]:
    """Every path any registered format may hold or leave for `split` in `data_dir` (what --force removes)."""
    return list(dict.fromkeys(p for f in registered() for p in f.leftovers(data_dir, split)))


def expected(split: str) -> str:
    """What a packed `split` may be called, for messages: "train.lmdb/ or train.h5"."""
    return " or ".join(f.shown(split) for f in registered())
