"""Ctrl-C and SIGTERM in the command-line tools: from a command's first import to its end, compiles included,
either signal ends it at once in one line on stderr and exit status 130 / 143, never a traceback. The training
loop swaps in its own handlers meanwhile (`trainer._StopRequests`), to save a checkpoint first and exit 0. Standard
library only: the entry points import this before anything slow.

The handler ends the process rather than raising KeyboardInterrupt: Python runs it wherever the main thread happens
to be, and an exception raised there is lost inside jax's garbage-collection callback (the run went on to the end),
becomes an ImportError inside a C extension's start-up, or aborts the process inside nanobind's. Outside the loop
there is nothing to save, and a run is built to survive a kill at any moment (`kill -9` resumes as well).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable

# 128 + the signal's number, what a shell reports for a command a signal ended.
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
RESUMES = "checkpoints already written are kept, and the same command resumes"


def run(main: Callable[[], int | None], after: str = "") -> int:
    """`main()`'s exit status; SIGINT or SIGTERM meanwhile ends the process with EXIT_STATUS and the line `stopped
    by SIGINT; <after>` (`after` says what became of the work). Both end it even where the parent left SIGINT
    ignored (a script's `command &`), as both stop the training loop; the previous handlers come back on return."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return main() or 0
    line = "stopped by {}" + (f"; {after}" if after else "") + "\n"

    def stop(signum: int, frame: object) -> None:
        # What stdout holds goes out first; the line goes straight to the descriptor, since the main thread may be
        # inside a write to sys.stderr right now (a reentrant write raises), as it may be in one to stdout.
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            sys.stdout.flush()
        os.write(2, line.format(signal.Signals(signum).name).encode())
        os._exit(EXIT_STATUS[signum])

    previous = {signum: signal.signal(signum, stop) for signum in EXIT_STATUS}
    try:
        return main() or 0
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: set outside Python, so it cannot be put back from here
                signal.signal(signum, handler)
