"""The evaluation label sets by name (trainer/labelsets/base.py says what one is). A new one is one module
defining `ENTRY` (a LabelList or an Exclusion) and one line in ENTRIES: validation, `imgnet test` (figures,
table, JSON, an --exclude-<name> option) and `imgnet compare` take it from here."""

from __future__ import annotations

import importlib

from trainer.labelsets.base import Exclusion, LabelList

# name -> the module that defines its ENTRY, in the order they are reported
ENTRIES = {
    "real": "trainer.labelsets.real",
    "blacklist": "trainer.labelsets.blacklist",
}
ORIGINAL = ("", "ILSVRC2012")  # the split's own labels: no key prefix, and their name in tables


def entries() -> list:
    return [importlib.import_module(module).ENTRY for module in ENTRIES.values()]


def label_lists() -> list[LabelList]:
    return [e for e in entries() if isinstance(e, LabelList)]


def exclusions() -> list[Exclusion]:
    return [e for e in entries() if isinstance(e, Exclusion)]


def figure_keys(names=None) -> tuple[str, ...]:
    """The summed figures of every label list (of those in `names`, when given): (`<name>_n`,
    `<name>_top1_err`, `<name>_top5_err`) each, in registry order."""
    return tuple(f"{s.name}_{k}" for s in label_lists() if names is None or s.name in names
                 for k in ("n", "top1_err", "top5_err"))


def titles() -> dict[str, str]:
    """{figure key prefix: name in tables}: the split's own labels first, then every label list."""
    return dict([ORIGINAL] + [(f"{s.name}_", s.title) for s in label_lists()])
