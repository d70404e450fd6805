"""How an error reads where this package reports it: on one line. Library messages (orbax's, tensorstore's, the OS's)
can span lines; a report here is one line that a log, a batch scheduler's capture or a test reads whole.
"""

from __future__ import annotations


def one_line(message: object) -> str:
    """`message` (an exception, or any text) with its line breaks and runs of spaces made single spaces."""
    return " ".join(str(message).split())
