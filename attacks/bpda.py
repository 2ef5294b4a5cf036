"""BPDA: backward-pass differentiable approximation, for models whose gradients are masked.

Paper: Athalye, Carlini, Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018,
section 4.1 (https://arxiv.org/abs/1802.00420).

Why: a quantizer, a threshold or any step function in the forward pass has a zero derivative almost
everywhere, so every gradient attack stands still (the `gradient_masking` check) and reports a robust
accuracy that the next attack breaks. BPDA keeps the forward pass exact and replaces, on the backward
pass only, the non-differentiable part g by a differentiable approximation: the identity when g(x) ~ x
(quantization, JPEG, a denoiser), or a surrogate module given for it.

Which parts (`parts`):
- "auto" (the default): what the model declares, else what can be found. A model declares its parts with
  an attribute `bpda`: a submodule path ("quantize"), a sequence of paths, or a mapping path -> surrogate
  module (None: the identity). Without a declaration, (1) the leading parameter-free modules whose input
  gradient is zero or not finite (input transforms before the first layer with weights: "the first
  layers"), and (2) every step function the forward calls (torch.round, floor, ceil, trunc, fix; as
  functions or tensor methods), which gets the identity as its derivative (the straight-through estimator).
- "PATH[,PATH...]": those submodules, the identity on the backward pass (their output must have their
  input's shape). A path is a name of `model.named_modules()` or a unique suffix of one ("quantize" finds
  "model.quantize" inside a normalization wrapper).

The forward value is unchanged bit for bit (`out.detach() + (x - x.detach())` adds an exact zero), so the
attack's own success checks see the real model. `Removed` is the other half of the same idea: the model
with those parts taken out of the forward pass too, the surrogate `transfer:self` crafts on.
Example:
    >>> out = BPDA(PGD(steps=20))(quantized_model, x, y, eps=8/255)
    >>> out = BPDA(PGD(), parts="quantize")(model, x, y, eps=8/255)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from ._core import AttackOutput, frozen
from .errors import AttackConfigError
from .wrapped import WrapsAttack, inner_record

STEP_FUNCTIONS = {torch.round: "round", torch.Tensor.round: "round", torch.floor: "floor",
                  torch.Tensor.floor: "floor", torch.ceil: "ceil", torch.Tensor.ceil: "ceil",
                  torch.trunc: "trunc", torch.Tensor.trunc: "trunc", torch.fix: "fix", torch.Tensor.fix: "fix"}


class _StepFunctions(TorchFunctionMode):
    """Step functions on float tensors that need a gradient: the identity's derivative (BPDA), or with
    remove=True the identity itself (the part taken out). Counts what it replaced, by name."""

    def __init__(self, remove: bool = False) -> None:
        super().__init__()
        self.remove = remove
        self.replaced: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = STEP_FUNCTIONS.get(func)
        x = args[0] if args else None
        if name is None or not isinstance(x, torch.Tensor) or not x.is_floating_point() or \
                (not self.remove and not (torch.is_grad_enabled() and x.requires_grad)):
            return func(*args, **kwargs)
        self.replaced[name] = self.replaced.get(name, 0) + 1
        if self.remove:
            return x.clone()
        out = func(*args, **kwargs)
        return out.detach() + (x - x.detach())


def _declared(model: nn.Module) -> Any:
    """The `bpda` declaration of the model or of a module it wraps (normalization, autocast, ...)."""
    for m in model.modules():
        d = getattr(m, "bpda", None)
        if d is not None and not isinstance(d, nn.Module):   # a submodule that happens to be called bpda is none
            return d
    return None


def _as_parts(spec: Any) -> dict[str, nn.Module | None]:
    if isinstance(spec, str):
        names = [s.strip() for s in spec.split(",") if s.strip()]
        if not names:
            raise AttackConfigError("bpda: no module path given")
        return {n: None for n in names}
    if isinstance(spec, Mapping):
        out = {}
        for k, v in spec.items():
            if v is not None and not isinstance(v, nn.Module):
                raise AttackConfigError(f"bpda surrogate for {k!r} must be a torch module or None, got "
                                        f"{type(v).__name__}")
            out[str(k)] = v
        return out
    if isinstance(spec, (list, tuple)):
        return {str(k): None for k in spec}
    raise AttackConfigError(f"bpda: expected 'auto', module paths or a mapping of them, got {spec!r}")


def resolve_module(model: nn.Module, path: str) -> tuple[str, nn.Module]:
    """The submodule named `path`, or the only one whose name ends with '.' + path."""
    named = dict(model.named_modules())
    if path in named and path:
        return path, named[path]
    hits = [n for n in named if n.endswith("." + path)]
    if len(hits) == 1:
        return hits[0], named[hits[0]]
    if not hits:
        known = ", ".join(n for n in list(named)[1:12] if n)
        raise AttackConfigError(f"bpda: the model has no submodule {path!r} (its modules: {known or 'none'}"
                                f"{', ...' if len(named) > 12 else ''})")
    raise AttackConfigError(f"bpda: {path!r} names several submodules ({', '.join(hits)}); give the full path")


def _masked(module: nn.Module, inp: torch.Tensor) -> bool:
    """Zero or non-finite input gradient of `module` at `inp` (a random cotangent)."""
    xi = inp.detach().float().requires_grad_(True)
    with torch.enable_grad():
        out = module(xi)
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            return True
        g, = torch.autograd.grad((out.float() * torch.randn_like(out.float())).sum(), xi, allow_unused=True)
    return g is None or not bool(torch.isfinite(g).all()) or not bool(g.abs().sum() > 0)


def leading_masked(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Leaf modules called before the first module with weights whose input gradient is masked and
    whose output has their input's shape (input transforms that BPDA can replace by the identity)."""
    names = {id(m): n for n, m in model.named_modules()}
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    calls: list[tuple[nn.Module, tuple, Any]] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: calls.append((mod, inp, out))) for m in leaves]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    found = []
    for mod, inp, out in calls:
        if any(True for _ in mod.parameters()):
            break
        if len(inp) != 1 or not isinstance(inp[0], torch.Tensor) or not isinstance(out, torch.Tensor) \
                or out.shape != inp[0].shape:
            continue
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            if _masked(mod, inp[0]):
                found.append(names[id(mod)])
    return found


@dataclass(frozen=True)
class Approximated:
    """Which parts of one model BPDA replaces: submodules (path -> surrogate or None) and whether the
    step functions are replaced too."""
    modules: tuple[tuple[str, nn.Module | None], ...]
    step_functions: bool

    def describe(self) -> dict[str, Any]:
        return {"modules": [p if s is None else f"{p} (surrogate {type(s).__name__})" for p, s in self.modules],
                "step_functions": self.step_functions}


def approximated(model: nn.Module, parts: Any, x: torch.Tensor) -> Approximated:
    """Resolve `parts` ("auto", paths, or a mapping) on `model`, probing it on x where needed."""
    if isinstance(parts, str) and parts.strip().lower() == "auto":
        decl = _declared(model)
        if decl is None:
            mods = tuple((p, None) for p in leading_masked(model, x))
            return Approximated(mods, True)
        parts = decl
    resolved = []
    for path, surrogate in _as_parts(parts).items():
        full, _ = resolve_module(model, path)
        resolved.append((full, surrogate))
    return Approximated(tuple(resolved), False)


class _Patched(nn.Module):
    """`model` with the approximated parts replaced on the backward pass (or, remove=True, taken out)."""

    def __init__(self, model: nn.Module, parts: Approximated, remove: bool = False) -> None:
        super().__init__()
        self.model, self.parts, self.remove = model, parts, remove
        self.train(model.training)
        self.replaced: dict[str, int] = {}

    def _hook(self, surrogate: nn.Module | None, path: str):
        def hook(module: nn.Module, inp: tuple, out: Any) -> Any:
            x = inp[0]
            if surrogate is None and (not isinstance(out, torch.Tensor) or out.shape != x.shape):
                raise AttackConfigError(f"bpda: module {path} maps shape {tuple(x.shape)} to "
                                        f"{tuple(getattr(out, 'shape', ()))}; the identity cannot stand in for "
                                        f"it (declare a surrogate module)")
            if self.remove:
                return x if surrogate is None else surrogate(x)
            if not (torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad):
                return out
            s = x if surrogate is None else surrogate(x)
            return out.detach() + (s - s.detach())
        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        named = dict(self.model.named_modules())
        hooks = [named[p].register_forward_hook(self._hook(s, p)) for p, s in self.parts.modules]
        mode = _StepFunctions(remove=self.remove) if self.parts.step_functions else contextlib.nullcontext()
        try:
            with mode:
                out = self.model(x)
        finally:
            for h in hooks:
                h.remove()
        if isinstance(mode, _StepFunctions):
            for k, v in mode.replaced.items():
                self.replaced[k] = self.replaced.get(k, 0) + v
        return out


def BPDAModel(model: nn.Module, parts: Approximated) -> nn.Module:
    """The model with the exact forward pass and the approximated backward pass."""
    return _Patched(model, parts, remove=False)


def Removed(model: nn.Module, parts: Approximated) -> nn.Module:
    """The model with the parts taken out (identity or surrogate in the forward pass too): a smooth
    surrogate of the model, for transfer attacks."""
    return _Patched(model, parts, remove=True)


@dataclass(frozen=True)
class BPDA(WrapsAttack):
    """`attack` with the backward pass through `parts` approximated (see the module docstring)."""
    attack: Any
    parts: Any = "auto"
    _seen: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.parts, str) and self.parts.strip().lower() == "auto"):
            _as_parts(self.parts)

    prefix = "bpda"

    def record(self) -> dict[str, Any]:
        inner = inner_record(self.attack)
        parts = self.parts if isinstance(self.parts, str) else sorted(_as_parts(self.parts))
        out = {**inner, "bpda": parts}
        if self._seen:
            out["bpda_parts"] = [a.describe() for a in self._seen.values()][0]
        return out

    def resolve(self, model: nn.Module, x: torch.Tensor) -> Approximated:
        key = id(model)
        if key not in self._seen:
            with frozen(model):
                self._seen[key] = approximated(model, self.parts, x[:1])
        return self._seen[key]

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 seeds: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 verify: bool = True, **kw: Any) -> AttackOutput:
        if x.shape[0] == 0:
            return self.attack(model, x, y, eps, seeds=seeds, generator=generator, verify=verify, **kw)
        parts = self.resolve(model, x)
        with frozen(model):
            wrapped = _Patched(model, parts)    # made in eval mode: the inner attack restores what it finds
            out = self.attack(wrapped, x, y, eps, seeds=seeds, generator=generator, verify=False, **kw)
            fwd, fooled = out.forward, out.fooled
            if verify:
                with torch.no_grad():
                    fooled = model(out.x_adv).argmax(1) != y
                fwd += x.shape[0]
        details = dict(out.details or {})
        if details.get("broken_by") is not None and verify:
            details["broken_by"] = [b if f else None for b, f in zip(details["broken_by"], fooled.tolist())]
        details["bpda"] = {**parts.describe(), "replaced": sorted(wrapped.replaced)}
        return AttackOutput(out.x_adv, fooled, fwd, out.backward, details)


__all__ = ["BPDA", "BPDAModel", "Approximated", "Removed", "STEP_FUNCTIONS", "approximated", "leading_masked",
           "resolve_module"]
