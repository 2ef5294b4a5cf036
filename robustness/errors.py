"""The one error type the CLI turns into a single line on stderr and exit code 2."""
from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """Bad input from the user (names, files, values): reported as one line, never a traceback."""


def unknown(kind: str, name: str, known: Iterable[str]) -> UserError:
    known = sorted(set(known))
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f" (see `robust-bench list {kind}s`)"
    return UserError(f"unknown {kind} {name!r}{hint}")
