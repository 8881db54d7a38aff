"""The errors the `ddfp` command turns into one clean line and a documented exit code.

Each class names a kind of failure a user acts on differently; `ddfp --help` lists the codes.
Config errors (`ddfp.config.ConfigError`, raised by the method library, which cannot import this
module) are usage errors too. `failure` maps an exception to the one line and code `ddfp` exits with.
"""

from __future__ import annotations

import errno
import sys

from ddfp.config import ConfigError

EXIT_USAGE = 2  # bad command line or configuration: nothing ran
EXIT_DATA = 3  # a bad or missing input file, download, checkpoint or a full disk
EXIT_JOB = 4  # a training or SLURM job failed
EXIT_BUSY = 5  # another process holds the run directory (or the workspace)
EXIT_INTERRUPTED = 130  # stopped on request (Ctrl-C, SLURM's stop signal), after saving

EXIT_CODES = {
    EXIT_USAGE: "usage or configuration error (nothing ran)",
    EXIT_DATA: "data, download, checkpoint or disk error (the message names the file)",
    EXIT_JOB: "a training or SLURM job failed",
    EXIT_BUSY: "another process is writing the same run directory",
    EXIT_INTERRUPTED: "interrupted (state saved; rerun the command to resume)",
}


class DdfpError(Exception):
    """A failure with a clean one-line message; `exit_code` is what `ddfp` exits with."""

    exit_code = 1


class UsageError(DdfpError):
    exit_code = EXIT_USAGE


class DataError(DdfpError):
    """An input file (image, mask, split list, archive, checkpoint) is missing, corrupt or unwritable."""

    exit_code = EXIT_DATA


class JobError(DdfpError):
    exit_code = EXIT_JOB


class BusyError(DdfpError):
    exit_code = EXIT_BUSY


INTERRUPTED = "interrupted; state saved, rerun to resume"
# Errors of the standard library and the method library (which cannot raise pipeline's classes) that
# are expected failures with a message naming what is wrong, checked in this order.
HANDLED: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int], ...] = (
    (ConfigError, EXIT_USAGE),
    ((FileNotFoundError, FileExistsError), EXIT_DATA),
    (ValueError, EXIT_USAGE),  # bad arguments named in the message (--methods, --settings, ...)
)


def _message(err: BaseException) -> str:
    text = str(err)
    # An error in a DataLoader worker arrives as its whole traceback; its last line is the message.
    return text.rstrip().splitlines()[-1].partition(": ")[2] if "\nOriginal Traceback" in text else text


def _unreadable_sample(err: BaseException) -> bool:
    dataset = sys.modules.get("ddfp.data.dataset")  # imported only where data was read: keeps torch out
    return dataset is not None and isinstance(err, dataset.SampleReadError)


def failure(err: BaseException) -> tuple[str, int] | None:
    """The one-line message and exit code of an expected failure; None for a bug (keep the traceback)."""
    if isinstance(err, KeyboardInterrupt):  # Ctrl-C, or the trainer's Interrupted once it has saved
        return INTERRUPTED, EXIT_INTERRUPTED
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device: {err.filename or err}", EXIT_DATA
    if isinstance(err, DdfpError):
        return _message(err), err.exit_code
    if _unreadable_sample(err):
        return _message(err), EXIT_DATA
    for kinds, code in HANDLED:
        if isinstance(err, kinds):
            return _message(err), code
    return None


def exit_code_help() -> str:
    """The exit codes for `ddfp --help`."""
    codes = {0: "success", 1: "an unexpected error, i.e. a bug (the traceback is printed)", **EXIT_CODES}
    lines = [f"  {code:<4} {meaning}" for code, meaning in codes.items()]
    return "exit codes:\n" + "\n".join(lines) + "\n\nDDFP_DEBUG=1 prints the traceback of every handled error too."

