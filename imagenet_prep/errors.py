"""The one exception type for bad user input; the CLI prints it as a one-line message."""


class ImgnetError(Exception):
    """Bad input or state the user can fix: the message names the bad value and what was expected."""
