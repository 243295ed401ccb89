"""Bad input to a cleaning CLI: reported as one line naming the flag/file/value, exit status 2."""

from __future__ import annotations

import sys


class BadInput(ValueError):
    """A flag, file or value the run cannot use; its message names it and what is expected."""


def fail(message: str) -> None:
    """One line on stderr, exit status 2 (no traceback)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
