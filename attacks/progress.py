"""What an attack is doing inside one call, for whoever runs it: progress events, and finished parts kept.

A composite attack (AutoAttack) can run for many minutes on one batch. It reports each part as it starts
and ends (`emit`), and runs each part through `attack_step`, so that a part an interrupted run finished
is not run again: the listener the caller installed (`listening`) may hold that part's result (it was
handed the result when the part finished; the runner stores it, robustness/runner.py) and returns it.

No listener installed (the default): `emit` does nothing and `attack_step` just runs the part. The
listener is context-local (contextvars), so threads and nested calls do not see each other's.

A part is keyed by what determines its result: the attack's settings, the part, eps, and the bytes of
its inputs, labels and per-example seeds. A kept result is used only under the same key, so a resume
ends with exactly the uninterrupted result. Without per-example seeds a part is not kept (its random
draws would differ on a rerun anyway).
"""
from __future__ import annotations

import contextvars
import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from ._core import AttackOutput

__all__ = ["Event", "Listener", "attack_step", "emit", "listening", "pack", "step_key", "unpack"]


@dataclass(frozen=True)
class Event:
    """`stage`: "start" (about to attack `examples`), "end" (done: `fooled` of them, in `seconds`) or
    "kept" (an interrupted run's result used instead: `fooled`, `seconds` as it measured them)."""
    attack: str
    part: str
    index: int          # 1-based position of the part in the attack's line-up
    total: int
    stage: str
    eps: float
    examples: int
    fooled: int | None = None
    seconds: float | None = None


class Listener:
    """What a caller installs; the defaults ignore events and keep nothing."""

    def event(self, e: Event) -> None:
        pass

    def recall(self, key: str) -> dict[str, Any] | None:
        return None

    def keep(self, key: str, state: dict[str, Any]) -> None:
        pass


_LISTENER: contextvars.ContextVar[Listener | None] = contextvars.ContextVar("robust_bench_attack_progress",
                                                                            default=None)


@contextmanager
def listening(listener: Listener) -> Iterator[Listener]:
    token = _LISTENER.set(listener)
    try:
        yield listener
    finally:
        _LISTENER.reset(token)


def emit(**fields: Any) -> None:
    listener = _LISTENER.get()
    if listener is not None:
        listener.event(Event(**fields))


def step_key(*parts: Any, tensors: tuple[torch.Tensor, ...] = ()) -> str:
    """A digest of a part's settings and the exact bytes of its input tensors."""
    h = hashlib.sha256(repr(parts).encode())
    for t in tensors:
        t = t.detach().contiguous().cpu()
        h.update(f"|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def pack(out: AttackOutput, seconds: float) -> dict[str, Any]:
    """A part's result as tensors and plain data (loadable with torch.load(weights_only=True))."""
    return {"x_adv": out.x_adv.detach().cpu(), "fooled": out.fooled.detach().cpu(), "forward": int(out.forward),
            "backward": int(out.backward), "details": out.details, "seconds": float(seconds)}


def unpack(state: dict[str, Any], device: torch.device) -> tuple[AttackOutput, float]:
    out = AttackOutput(state["x_adv"].to(device), state["fooled"].to(device), int(state["forward"]),
                       int(state["backward"]), state.get("details"))
    return out, float(state["seconds"])


def attack_step(key: str | None, device: torch.device, compute: Callable[[], AttackOutput],
                sync: Callable[[], None] = lambda: None) -> tuple[AttackOutput, float, bool]:
    """(output, seconds, kept): the listener's kept result for `key`, or compute() timed and handed to
    the listener to keep."""
    listener = _LISTENER.get()
    if listener is not None and key is not None:
        state = listener.recall(key)
        if state is not None:
            out, seconds = unpack(state, device)
            return out, seconds, True
    sync()
    t0 = time.perf_counter()
    out = compute()
    sync()
    seconds = time.perf_counter() - t0
    if listener is not None and key is not None:
        listener.keep(key, pack(out, seconds))
    return out, seconds, False
