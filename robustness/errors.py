"""The one error type the CLI turns into a single line on stderr and exit code 2."""
from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """Bad input from the user (names, files, values): reported as one line, never a traceback."""


# kinds with a `robust-bench list WHAT` command (a test checks each is one of the command's choices)
LISTED = {"model": "models", "dataset": "datasets", "attack": "attacks", "recipe": "recipes"}


def unknown(kind: str, name: str, known: Iterable[str]) -> UserError:
    """'unknown KIND NAME' with the closest names, else the command that lists them, else some of them."""
    known = sorted(set(known))
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if close:
        hint = f"; did you mean {', '.join(close)}?"
    elif kind in LISTED:
        hint = f" (see `robust-bench list {LISTED[kind]}`)"
    elif known:
        shown = ", ".join(known[:12])
        hint = f" (known: {shown}" + (f", ... {len(known) - 12} more)" if len(known) > 12 else ")")
    else:
        hint = " (none are available)"
    return UserError(f"unknown {kind} {name!r}{hint}")
