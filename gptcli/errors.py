"""Typed errors raised by the library; the CLI turns each into one line and an exit code."""

from __future__ import annotations


class GptCliError(Exception):
    """Base class. `exit_code` is what the CLI exits with: 1 for run-time failures. `hint`, when
    given, is what to try next: the CLI prints it on a line of its own under the error."""

    exit_code = 1
    hint: str | None = None
    label = "error"  # the word the CLI's one line starts with ("error: ...")

    def __init__(self, *args: object, hint: str | None = None):
        super().__init__(*args)
        self.hint = hint


class _Refused(GptCliError):
    """What the user gave cannot be used as it is: exit 2, as for bad usage."""

    exit_code = 2


class UsageError(_Refused):
    """A bad flag or config value: the message names the flag or key."""


class DataError(_Refused):
    """Unusable input text: missing, empty, undecodable or too short."""


class CheckpointError(_Refused):
    """A file that is not a usable gptcli checkpoint, or one that does not fit the model."""


class DownloadError(GptCliError):
    """A download that failed: the message names the URL and the HTTP status or error."""


class SaveError(GptCliError):
    """A checkpoint, the metrics log or the config could not be written (a full disk, say)."""


class TrainingError(GptCliError):
    """A failure while training, e.g. a non-finite loss."""


class RunDirError(GptCliError):
    """A run directory (or prepare's output directory) that cannot be written: another process
    writes it, or it is read-only."""


class GptCliWarning(UserWarning):
    """Something the library went on despite (``warnings.warn``): the CLI prints it as one
    ``warning: ...`` line on stderr."""


def os_error_reason(e: OSError) -> str:
    """What a failed write means, in words: "No space left on device", "file size limit
    exceeded", never a library's internal text."""
    import errno

    if e.errno == errno.EFBIG:
        return "file size limit exceeded (File too large)"
    return e.strerror or str(e) or type(e).__name__
