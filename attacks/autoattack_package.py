"""AutoAttack, the reference package (pyautoattack from PyPI, or GitHub's autoattack), on our calling
convention. Registered as `autoattack-package`; `autoattack` is our own implementation
(attacks/autoattack.py), which this one exists to check.

Paper: Croce, Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020. https://arxiv.org/abs/2003.01690
Norm: L-inf or L2.

What the package does and how this adapter fills the gaps (pyautoattack 0.2.0, read from its source):
- `AutoAttack(model, *, attacks=None, device, eps, norm, seed, version)`; `run_standard_evaluation(x, y,
  /, *, batch_size, state_path)` returns the pair (x_adv, y_adv): adversarial inputs where one was found
  (the clean input elsewhere) and the model's predicted labels on them. `fooled` is y_adv != y.
- The number of classes: the package reads it from the logits only to print a warning; APGD-T and FAB-T
  keep their hard-coded 9 target classes, which indexes past the logits of a model with fewer than 10
  classes. Here it is read from the model's logits and both target counts are set to classes - 1 (at
  most 9); with fewer than 4 classes APGD-T is dropped (version "custom" with the rest), listed in
  `details["skipped"]`.
- Seeds: the package takes one seed per call and reseeds torch's global RNG with it before each
  sub-attack; we pass the first example's seed (so results depend on the batch, unlike our own attacks:
  the entry is `batch_dependent` and the run key holds the batch size) and run it inside a forked RNG so
  the global random state is left as it was.
- Passes: the package does not report them; the model is wrapped in `PassCounter` (forward examples
  per call; backward examples through a hook on the output). This includes the package's own checks
  (randomness check: 5 forwards of the first batch, output range, dynamic-defense check).
- Per-sub-attack time and passes: each sub-attack object's `perturb` is wrapped on the instance.
- The model runs in eval mode without weight gradients (`frozen`), restored afterwards.
- verify=True re-checks the returned points with one forward pass; verify=False trusts y_adv (the
  package computed it on exactly those points).
Arguments:
    norm: "linf" or "l2".
    version: "standard", "plus" or "rand".
    batch_size: the package's batch size (250).
    square_queries: Square's query budget (None: the version's, 5000); for quick comparisons.
    attacks: a custom line-up ("+"- or comma-separated, or a tuple) from apgd-ce, apgd-dlr, apgd-t, fab,
        fab-t, square, run with the version's settings (like our `autoattack`'s `attacks`).
Example:
    >>> out = AutoAttackPackage(norm="linf")(model, x, y, eps=8/255)
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ._compat import import_autoattack
from ._core import AttackOutput, PassCounter, canonical_norm, check_eps, frozen
from .errors import AttackConfigError

_PACKAGE_NORM = {"linf": "Linf", "l2": "L2"}
_STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")


def package_version() -> str:
    import importlib.metadata as md
    mod = import_autoattack()
    for dist in ("pyautoattack", "autoattack"):
        try:
            return f"{dist} {md.version(dist)}"
        except md.PackageNotFoundError:
            continue
    return mod.__name__


def _run(aa, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_adv, y_adv) from pyautoattack's pair API, or from GitHub autoattack's (bs=, return_labels=)."""
    params = inspect.signature(aa.run_standard_evaluation).parameters
    if "batch_size" in params:
        return aa.run_standard_evaluation(x, y, batch_size=batch_size)
    return aa.run_standard_evaluation(x, y, bs=batch_size, return_labels=True)


@contextlib.contextmanager
def _captured_warnings() -> Iterator[list[str]]:
    """The package reports its checks (randomized model, probabilities as outputs, zero gradients, Square
    beating the gradient attacks) as WARNING records on the 'auto-attack' logger: collect them instead of
    printing them, for the caller to show."""
    log = logging.getLogger("auto-attack")
    got: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record.getMessage())

    handler = _Keep(level=logging.WARNING)
    old_propagate = log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield got
    finally:
        log.removeHandler(handler)
        log.propagate = old_propagate


@dataclass(frozen=True)
class AutoAttackPackage:
    norm: str = "linf"
    version: str = "standard"
    batch_size: int = 250
    square_queries: int | None = None
    attacks: tuple[str, ...] | str | None = None

    name = "autoattack-package"

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", canonical_norm(self.norm))
        if self.version not in ("standard", "plus", "rand"):
            raise AttackConfigError(f"unknown AutoAttack version {self.version!r}; expected standard, plus or rand")
        if self.batch_size < 1:
            raise AttackConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.square_queries is not None and self.square_queries < 1:
            raise AttackConfigError(f"square_queries must be >= 1, got {self.square_queries}")
        if self.attacks is not None:
            items = self.attacks.replace("+", ",").split(",") if isinstance(self.attacks, str) else self.attacks
            items = tuple(a.strip().lower() for a in items if a.strip())
            known = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
            bad = [a for a in items if a not in known]
            if bad or not items:
                raise AttackConfigError(f"unknown AutoAttack sub-attack(s) {', '.join(bad) or '(none given)'}; "
                                 f"expected from {', '.join(known)}")
            object.__setattr__(self, "attacks", items)

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 seeds: torch.Tensor | None = None, verify: bool = True, **_: Any) -> AttackOutput:
        check_eps(eps, self.norm)
        n = x.shape[0]
        details: dict[str, Any] = {"version": self.version, "n_classes": None, "skipped": [], "sub_attacks": [],
                                   "implementation": package_version()}
        if eps == 0 or n == 0:
            return AttackOutput(x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device), 0, 0, details)
        pkg = import_autoattack()
        seed = int(seeds[0]) if seeds is not None and len(seeds) else 0
        with frozen(model), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            counter = PassCounter(model)       # in eval mode, as the model is now
            with torch.no_grad():
                k = int(counter(x[:1]).shape[1])
            details["n_classes"] = k
            aa = self._build(pkg, counter, eps, seed, x.device, k, details)
            self._instrument(aa, counter, details)
            with _captured_warnings() as warned:
                x_adv, y_adv = _run(aa, x, y, self.batch_size)
            details["package_warnings"] = warned
            fooled = (y_adv != y)
            if verify:
                with torch.no_grad():
                    fooled = counter(x_adv).argmax(1) != y
        fwd, bwd = counter.counts()
        return AttackOutput(x_adv.detach(), fooled.to(x.device), fwd, bwd, details)

    def _build(self, pkg, model: torch.nn.Module, eps: float, seed: int, device: torch.device, k: int,
               details: dict[str, Any]):
        norm = _PACKAGE_NORM[self.norm]
        kwargs: dict[str, Any] = {}
        if "verbose" in inspect.signature(pkg.AutoAttack).parameters:   # GitHub's autoattack prints by default
            kwargs["verbose"] = False
        aa = pkg.AutoAttack(model, norm=norm, eps=eps, seed=seed, device=device, version=self.version, **kwargs)
        targets = min(9, k - 1)
        aa.apgd_targeted.n_target_classes = targets
        aa.fab.n_target_classes = targets
        if self.square_queries is not None:
            aa.square.n_queries = self.square_queries
        if self.attacks is not None:
            aa.attacks_to_run = list(self.attacks)     # the version's settings, these sub-attacks
            details["version"] = "custom"
        lineup = list(aa.attacks_to_run)
        drop = []
        if k < 4:
            drop.append(("apgd-t", f"targeted DLR needs >= 4 classes, model has {k}"))
        if k < 3:
            drop.append(("apgd-dlr", f"DLR needs >= 3 classes, model has {k}"))
        if any(name in lineup for name, _ in drop):
            names = {name for name, _ in drop}
            details["skipped"] = [{"name": name, "reason": why} for name, why in drop if name in lineup]
            aa.attacks_to_run = [a for a in lineup if a not in names]   # the version's settings, fewer attacks
        return aa

    @staticmethod
    def _instrument(aa, counter: PassCounter, details: dict[str, Any]) -> None:
        """Wrap each sub-attack's perturb on the instance to time it and count its passes."""
        rows: dict[str, dict[str, Any]] = {}

        def label(obj) -> str:
            if obj is aa.apgd:
                return "apgd-" + str(obj.loss)
            if obj is aa.apgd_targeted:
                return "apgd-t"
            if obj is aa.fab:
                return "fab-t" if obj.targeted else "fab"
            return "square"

        def wrap(obj) -> None:
            inner = obj.perturb

            def perturb(x, y=None, *args, **kwargs):
                name = label(obj)
                row = rows.get(name)
                if row is None:
                    row = rows[name] = {"name": name, "implementation": "package", "seconds": 0.0, "forward": 0,
                                        "backward": 0, "attacked": 0}
                    details["sub_attacks"].append(row)
                f0, b0 = counter.counts()
                if x.is_cuda:
                    torch.cuda.synchronize(x.device)
                t0 = time.perf_counter()
                out = inner(x, y, *args, **kwargs)
                if x.is_cuda:
                    torch.cuda.synchronize(x.device)
                f1, b1 = counter.counts()
                row["seconds"] += time.perf_counter() - t0
                row["forward"] += f1 - f0
                row["backward"] += b1 - b0
                row["attacked"] += int(x.shape[0])
                return out
            obj.perturb = perturb

        for obj in (aa.apgd, aa.apgd_targeted, aa.fab, aa.square):
            wrap(obj)


__all__ = ["AutoAttackPackage", "package_version"]
