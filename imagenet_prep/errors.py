"""The one exception type for bad user input; the CLI prints it as a one-line message."""


class ImgnetError(Exception):
    """Bad input or state the user can fix: the message names the bad value and what was expected."""


class WorkerDied(ImgnetError):
    """A worker process of an offline stage died (the OOM killer, kill -9, a crash in a C library): the
    message names the cause and, where known, the task it was on (imagenet_prep.pool)."""
