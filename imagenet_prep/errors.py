"""The one exception type for bad user input; the CLI prints it as a one-line message (`shown` keeps a name in
it printable)."""

import os


class ImgnetError(Exception):
    """Bad input or state the user can fix: the message names the bad value and what was expected."""


class WorkerDied(ImgnetError):
    """A worker process of an offline stage died (the OOM killer, kill -9, a crash in a C library): the
    message names the cause and, where known, the task it was on (imagenet_prep.pool)."""


def shown(text) -> str:
    """A name or path for a one-line message: as is, or repr() where it holds a newline, another control
    character or undecodable bytes (surrogateescape), so that the message stays one printable line."""
    text = os.fsdecode(text) if isinstance(text, bytes) else str(text)
    return text if text.isprintable() else repr(text)
