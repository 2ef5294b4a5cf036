"""`robust-bench`: a thin command line over the library. Each sub-command lives in its own module with
`register(subparsers)`; bad input becomes one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from ..errors import UserError

# sub-command modules, in the order `--help` lists them; a module that is not there yet is skipped
COMMANDS = ("run", "certify", "listing", "train", "compress", "publish", "corruptions_grid")


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def build_parser() -> Parser:
    parser = Parser(prog="robust-bench", description="Measure, harden and publish the adversarial robustness "
                    "of image classifiers. Run `robust-bench run` for the built-in offline demo.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name and e.name.endswith(f"cli.{name}"):
                continue
            raise
        mod.register(sub)
    return parser


def _is_user_facing(e: BaseException) -> bool:
    """The errors every package raises on purpose (bad input, a refused attack, an unusable store):
    one line each. Looked up in sys.modules so the CLI imports no package just to catch its errors."""
    if isinstance(e, UserError):
        return True
    kinds = []
    for module, name in (("attacks.errors", "AttackError"), ("leaderboards.store", "StoreError"),
                         ("defenses.trainer", "TrainingError")):
        mod = sys.modules.get(module)
        if mod is not None and hasattr(mod, name):
            kinds.append(getattr(mod, name))
    return bool(kinds) and isinstance(e, tuple(kinds))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, `kill`): unwinds like Ctrl-C, so what finished is kept."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _on_sigterm():
    """Turn SIGTERM into Terminated while a command runs (main thread only); returns what to restore."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def main(argv: Sequence[str] | None = None) -> int:
    # OpenMP threads that wait for work by spinning starve each other and the other jobs on a small or
    # shared CPU (the default run: 81 s with OpenMP's default, 8 s passive, load 11 on 2 cores); read when
    # torch loads, so set before any command imports it; a value the user set wins
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]   # recorded with each run
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    previous = _on_sigterm()
    try:
        return int(args.func(args) or 0)
    except Exception as e:  # noqa: BLE001 - only the typed errors below become one line
        if not _is_user_facing(e):
            raise
        sys.stderr.write(f"robust-bench: error: {_one_line(e)}\n")
        return 2
    except KeyboardInterrupt as e:
        how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        sys.stderr.write(f"robust-bench: {how}; the finished batches, and the finished sub-attacks of the batch in "
                         f"flight, are kept: rerun the same command to resume\n")
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if previous is not None:
            import signal
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
