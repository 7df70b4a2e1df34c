"""The one error family charrnn raises for problems a user can cause and fix.

Every error type charrnn raises lives here. The CLI prints `error: <message>` for these and
exits with `exit_code`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CharRNNError(Exception):
    """A problem with the user's input or environment (exit code 1 unless said otherwise)."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class CharRNNWarning(UserWarning):
    """Something the user should know that did not stop the work (training without a view
    warns through Python's `warnings`)."""


class UsageError(CharRNNError):
    """The command line or config asks for something invalid (exit code 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """Every problem found in a config, reported together."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = list(problems)
        self.source = source
        count = len(self.problems)
        head = f"{source}: {count} problem{'s' if count != 1 else ''}: "
        super().__init__(head + "; ".join(self.problems))


class CorpusError(CharRNNError):
    """A corpus that cannot be read or used (missing, empty, not UTF-8, too short)."""


class VocabError(CharRNNError):
    """A vocabulary file that is missing, malformed or unusable."""


class DownloadError(CharRNNError):
    """A corpus download that failed or did not match its published size and checksum."""


class CheckpointError(CharRNNError):
    """A checkpoint that is missing, damaged, unsafe or not charrnn's."""


class TrainingStopped(CharRNNError):
    """Training ended early for a reason the user must act on (it diverged)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by a signal (Ctrl-C, SIGTERM, SIGUSR1, SIGHUP), last.pt saved; the
    message says how to continue.

    A KeyboardInterrupt, as Python's own Ctrl-C is, not an Exception: a loop of runs that
    catches `Exception` (a sweep going on past a failed run) stops at a Ctrl-C, rather than
    going on to the next run. The command line reports it like a CharRNNError.
    """

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self):  # whole through pickle (a sweep's worker processes)
        return type(self), (str(self), self.exit_code)


class ProcessFailed(CharRNNError):
    """Raised on every process of a torchrun job when another one failed, so all stop together."""


class Overloaded(CharRNNError):
    """A server whose batch and queue are full: the request may be sent again later."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after  # seconds, as HTTP's Retry-After header says


class ShuttingDown(CharRNNError):
    """A server that is stopping takes no new requests."""


class Cancelled(CharRNNError):
    """Work its caller no longer wants, stopped part-way (a beam search whose client left)."""


class ResourceError(CharRNNError):
    """A size this machine cannot hold (memory), refused before anything is allocated."""


# What charrnn raises for a problem or a stop the user caused: reported in one line, each
# with its exit code. (TrainingInterrupted is no CharRNNError: see its docstring.)
REPORTED = (CharRNNError, TrainingInterrupted)
