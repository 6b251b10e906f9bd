"""The loader's decoders by name (trainer/decoders/base.py says what one is). A new decoder is one module
that defines a `Decoder` subclass and one line in DECODERS; `Loader(..., decoder=NAME)` picks it."""

from __future__ import annotations

import importlib

from imagenet_prep.errors import ImgnetError

# name -> "module:class"
DECODERS = {
    "cpu": "trainer.decoders.cpu:CpuCropDecoder",
}
DEFAULT = "cpu"


def decoder_class(name: str | None = None) -> type:
    """The Decoder subclass registered as `name` (None: DEFAULT)."""
    name = DEFAULT if name is None else name
    if name not in DECODERS:
        raise ImgnetError(f"decoder={name!r}; expected one of {', '.join(DECODERS)}")
    mod, _, cls = DECODERS[name].partition(":")
    return getattr(importlib.import_module(mod), cls)
