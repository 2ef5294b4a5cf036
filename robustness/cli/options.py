"""Parsers for option values shared by sub-commands: eps lists, per-channel values, key=value args."""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import UserError


def parse_number(text: str, what: str = "value") -> float:
    """A float or a fraction like 8/255 (the store's own parser, so the CLI and protocols agree)."""
    from leaderboards.threats import parse_number as parse
    try:
        return parse(text)
    except ValueError:
        raise UserError(f"bad {what} {text!r}: expected a finite number or a fraction like 8/255") from None


def parse_eps_list(text: str) -> tuple[float, ...]:
    items = [s for s in text.split(",") if s.strip()]
    if not items:
        raise UserError("--eps needs at least one value")
    values = tuple(parse_number(s, "eps") for s in items)
    for s, v in zip(items, values):
        if v < 0:
            raise UserError(f"bad eps {s.strip()!r}: must be >= 0")
    return values


def parse_channels(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    return tuple(parse_number(s, what) for s in text.split(",") if s.strip())


def parse_list(text: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    if not items:
        raise UserError("empty list")
    return items


def parse_value(text: str) -> Any:
    """key=value values: bool, int, float (fractions too), else the string."""
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    try:
        return int(low)
    except ValueError:
        pass
    try:
        return parse_number(text)
    except UserError:
        return text.strip()


def parse_kv(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    out: dict[str, Any] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise UserError(f"bad argument {part!r}: expected key=value")
        k, v = part.split("=", 1)
        out[k.strip().replace("-", "_")] = parse_value(v)
    return out


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {v}")
    return v


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The options of a model given by name that every command loading one shares (run, certify, ...)."""
    m = p.add_argument_group("model options")
    m.add_argument("--weights", help="weights for the model (a state_dict checkpoint in a common layout; for "
                                     "robustbench: the model directory)")
    m.add_argument("--mean", help="per-channel normalization mean the model expects, e.g. 0.485,0.456,0.406")
    m.add_argument("--std", help="per-channel normalization std, e.g. 0.229,0.224,0.225")
    m.add_argument("--num-classes", type=positive_int, help="classes, passed to a factory that takes num_classes")
    m.add_argument("--unsafe-load", action="store_true",
                   help="allow checkpoints that need full unpickling (can run code from the file)")
