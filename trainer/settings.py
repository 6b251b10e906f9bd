"""Settings fields that carry their own command-line option: the help text, the allowed values and the flag
form live in the field's metadata, so that a settings dataclass is the one definition of its options.

    towers: int = setting(2, "2: the two-GPU net; 1: the one-GPU net.", choices=(1, 2))
    dropout: float = setting(0.5, "Dropout in fc6 and fc7.", low=0.0, high=1.0, high_open=True)

`check(obj)` refuses a value outside what the metadata allows (ImgnetError naming the field); cli.py turns
the fields into click options (`cli.options_from`).
"""

from __future__ import annotations

from dataclasses import field, fields

from imagenet_prep.errors import ImgnetError


def setting(default, help: str, *, choices=None, low=None, high=None, low_open: bool = False,
            high_open: bool = False, flag: str | None = None, option: bool = True, **extra):
    """A dataclass field with its option's metadata: `choices` (allowed values), a number range [low, high]
    (`low_open`/`high_open` exclude an end), `flag` ("--x/--no-x" for a switch pair), `option=False` for a
    setting with no command-line option; `extra` keys are for their readers (e.g. `divergence_hint`)."""
    meta = {"help": help, "choices": None if choices is None else tuple(choices), "low": low, "high": high,
            "low_open": low_open, "high_open": high_open, "flag": flag, "option": option, **extra}
    return field(default=default, metadata=meta)


def _in_range(v, m: dict) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    low_ok = m["low"] is None or (v > m["low"] if m["low_open"] else v >= m["low"])
    high_ok = m["high"] is None or (v < m["high"] if m["high_open"] else v <= m["high"])
    return low_ok and high_ok


def range_text(m: dict) -> str:
    """[0.0, 1.0) for low 0.0, high 1.0 open: the interval a number must lie in."""
    low = "-inf" if m["low"] is None else m["low"]
    high = "inf" if m["high"] is None else m["high"]
    return f"{'(' if m['low_open'] else '['}{low}, {high}{')' if m['high_open'] or m['high'] is None else ']'}"


def check(obj, names=None) -> None:
    """ImgnetError for the first field of the dataclass `obj` (those in `names`, or all) whose value its
    metadata does not allow."""
    for f in fields(obj):
        m = f.metadata
        if "help" not in m or (names is not None and f.name not in names):
            continue
        v = getattr(obj, f.name)
        if m["choices"] is not None and v not in m["choices"]:
            raise ImgnetError(f"{f.name}={v!r}; expected one of {', '.join(map(str, m['choices']))}")
        if (m["low"] is not None or m["high"] is not None) and not _in_range(v, m):
            raise ImgnetError(f"{f.name}={v!r}; expected a number in {range_text(m)}")
