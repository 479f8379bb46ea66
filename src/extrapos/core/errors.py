"""Errors a user can fix.

`UserError` marks bad input (an unknown name, a bad value, a missing file, a corrupt checkpoint).
It subclasses `ValueError`, so library callers can catch it as such; the CLI prints its message
as one line on stderr and exits with code 2 (no traceback unless `--debug`). The message names
the problem and the fix.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input that the user can fix; the message says how."""
