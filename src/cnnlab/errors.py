"""Typed errors for problems a user can cause and fix.

Library code raises these; `cnnlab.cli` turns each into one line on stderr and a non-zero exit,
never a traceback.
"""


class CnnlabError(Exception):
    """Base class: the message is complete and meant for the user."""


class ConfigError(CnnlabError):
    """A bad option: unknown name, out-of-range value, unwritable folder."""


class DataError(CnnlabError):
    """Dataset files are missing, truncated or corrupt, or could not be downloaded."""


class CheckpointError(CnnlabError):
    """A run folder or weights file that cannot be loaded safely."""


class OutputError(CnnlabError):
    """A file could not be written: an unwritable folder, a full disk."""


class TrainingError(CnnlabError):
    """Training stopped: a non-finite loss or an out-of-memory error."""


class ImageError(DataError):
    """A user's image cannot be read: not an image, truncated, empty, too small or too large."""


class NoInkError(ImageError):
    """An image that holds nothing to classify: after removing the background it is blank."""


class ExportError(CnnlabError):
    """An exported model does not reproduce the PyTorch model it was exported from."""


class EvaluationError(CnnlabError):
    """Predictions failed: the device ran out of memory even for one image at a time."""


def shell_command(*words: object) -> str:
    """A command for a message, each word quoted for a POSIX shell (`shlex.quote`); a word with
    control characters (a newline in a folder name) as bash's $'...', so the command stays one
    line and still runs when pasted."""
    import shlex

    return " ".join(
        shlex.quote(word) if word.isprintable() else "$'" + "".join(map(escape, word)) + "'"
        for word in map(str, words)
    )


def escape(char: str) -> str:
    if char in "\\'":
        return "\\" + char
    if char.isprintable():
        return char
    code = ord(char)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )
