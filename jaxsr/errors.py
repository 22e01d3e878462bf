"""Exit statuses of the ``jaxsr`` command, and the error that carries one.

A command handler raises ``CommandError(message, status)``; ``jaxsr.cli.main`` prints the
message as one line on stderr and returns the status (``--debug`` adds the traceback). The
statuses are documented in ``docs/errors.md``; scripts may rely on them.
"""

from __future__ import annotations

OK = 0
INTERNAL = 1      # a bug in jaxsr: the message says so and asks for --debug
USAGE = 2         # bad options or option values (argparse's own status), bad training config
DATA = 3          # the data table: unreadable, malformed, non-numeric, out of the limits
MODEL = 4         # a model, weights directory or checkpoint that cannot be used
TRAINING = 5      # training stopped on its own: a non-finite loss
OUTPUT = 6        # an output folder or file that cannot be written
INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
BROKEN_PIPE = 141  # the reader of stdout went away (``| head``), as shells report SIGPIPE

STATUS_NAMES = {OK: "ok", INTERNAL: "internal error", USAGE: "usage", DATA: "bad data",
                MODEL: "bad model or weights", TRAINING: "training stopped",
                OUTPUT: "cannot write output", INTERRUPTED: "interrupted",
                BROKEN_PIPE: "output closed"}


class CommandError(Exception):
    """An error a command reports as one line, with the exit status it ends with."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status
