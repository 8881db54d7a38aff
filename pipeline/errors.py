"""The errors the `ddfp` command turns into one clean line and a documented exit code.

Each class names a kind of failure a user acts on differently; `ddfp --help` lists the codes.
Config errors (`ddfp.config.ConfigError`, raised by the method library, which cannot import this
module) are usage errors too.
"""

from __future__ import annotations

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
