"""`torchattacks:NAME`: any attack class of the torchattacks package on our calling convention.

    robust-bench run --attack torchattacks:CW --norm l2 --attack-args c=1,steps=100
    robust-bench run --attack torchattacks:MIFGSM,torchattacks:Square --attack-args decay=0.9

Package: Kim, "Torchattacks: A PyTorch Repository for Adversarial Attacks", 2020.
https://github.com/Harry24k/adversarial-attacks-pytorch

How it maps (torchattacks is imported only when a `torchattacks:` attack is resolved, so `import attacks`
neither needs it nor gets slower):
- NAME is a class of `torchattacks.__all__`, matched case-insensitively; the wrappers (MultiAttack, LGV)
  are refused.
- Norms by class (`NORMS`): L-inf classes get "linf", L2 classes "l2", classes that take a `norm`
  argument (APGD, APGDT, FAB, Square, AutoAttack) both, and it is passed to them as "Linf"/"L2".
  L1 (EADL1) and L0 (JSMA, OnePixel, Pixle, SparseFool) classes and the non-attacks (VANILA, GN) are
  listed with their own norm ("l1", "l0", "none"), so the engine refuses them under linf/l2 with a
  message that says why.
- Arguments: every argument of the class's constructor except `model` can be given (`--attack-args`;
  values arrive as python values); `eps` (or PIFGSM's `max_epsilon`) is set from the run's eps at each
  call. The shared CLI options reach the classes that take them: --steps as `steps`, --step-size as
  `alpha`, --restarts as `n_restarts`, --loss as `loss`, --random-start as `random_start`.
- `n_classes` (APGDT, FAB, AutoAttack; torchattacks defaults it to 10) is set from the model's logits
  unless given; `seed` (APGD, APGDT, FAB, Square, AutoAttack) from the first example's seed unless given.
- Attacks without an eps budget (CW, DeepFool, EADEN, ...) return a minimal perturbation of any size:
  the output is projected onto the eps-ball (and the [0, 1] box) and counts only if it still fools the
  model, so every number is at the run's threat model. Outputs of bounded attacks are projected as well
  (a no-op up to rounding).
- Normalization is never applied twice: our models take [0, 1] pixels and normalize inside, so the
  adapter never calls `set_normalization_used`; the model it hands torchattacks is a `PassCounter`,
  never a torchattacks `RobModel`, so torchattacks finds no normalization to apply either.
- The model is attacked in eval mode without weight gradients (`frozen`); its mode and flags are
  restored afterwards. torchattacks restores the mode it finds on the model it is handed, so the
  `PassCounter` is made inside `frozen`, in eval mode (made in train mode, it was switched back to
  train before our verify pass, and the flags were read off dropout and batch statistics).
- Randomness: torchattacks draws from torch's global RNG, per batch. The adapter seeds it with the first
  example's seed inside a forked RNG (the global random state is left as it was): a call is
  reproducible, but an example's outcome depends on the other examples in its batch, so every
  `torchattacks:` entry is `batch_dependent` (the run key then holds the batch size).
- Passes are counted with `PassCounter` (forward examples per call; backward examples by a hook).
- targeted: pass `target=` to the call (torchattacks' "targeted by label" mode).
- verify=True re-checks the projected points with one forward pass; verify=False skips it and
  `fooled` is all False (the attack reports no flags of its own; the engine decides).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from ._core import AttackOutput, PassCounter, canonical_norm, check_eps, clip_to_box, frozen, project
from .errors import AttackConfigError, AttackUnavailable
from .entry import AttackEntry

_LINF = ("FGSM", "BIM", "RFGSM", "PGD", "EOTPGD", "FFGSM", "TPGD", "MIFGSM", "UPGD", "DIFGSM", "TIFGSM",
         "Jitter", "NIFGSM", "PGDRS", "SINIFGSM", "VMIFGSM", "VNIFGSM", "SPSA", "PIFGSM", "PIFGSMPP")
_L2 = ("CW", "PGDL2", "PGDRSL2", "DeepFool", "EADEN")
_BOTH = ("APGD", "APGDT", "FAB", "Square", "AutoAttack")
NORMS: dict[str, tuple[str, ...]] = {
    **{n: ("linf",) for n in _LINF}, **{n: ("l2",) for n in _L2}, **{n: ("linf", "l2") for n in _BOTH},
    "EADL1": ("l1",), "JSMA": ("l0",), "OnePixel": ("l0",), "Pixle": ("l0",), "SparseFool": ("l0",),
    "VANILA": ("none",), "GN": ("none",),
}
_WRAPPERS = ("MultiAttack", "LGV")
_EPS_ARG = {"PIFGSM": "max_epsilon", "PIFGSMPP": "max_epsilon"}
_BLACK_BOX = ("Square", "SPSA", "OnePixel", "Pixle", "GN", "VANILA")
# our shared option -> the torchattacks argument it means
_ALIASES = {"step_size": "alpha", "restarts": "n_restarts"}
_TA_NORM = {"linf": "Linf", "l2": "L2"}


def _package():
    try:
        import torchattacks
    except ImportError:
        raise AttackUnavailable("torchattacks is not installed: pip install 'robust-bench[torchattacks]'") from None
    return torchattacks


def attack_classes() -> dict[str, type]:
    """torchattacks' attack classes by name (wrappers excluded)."""
    ta = _package()
    return {n: getattr(ta, n) for n in ta.__all__ if n not in _WRAPPERS and inspect.isclass(getattr(ta, n))}


def _class_args(cls: type) -> dict[str, inspect.Parameter]:
    params = dict(inspect.signature(cls.__init__).parameters)
    params.pop("self", None)
    params.pop("model", None)
    return params


def norms_of(name: str, cls: type | None = None) -> tuple[str, ...]:
    if name in NORMS:
        return NORMS[name]
    if cls is not None and "norm" in _class_args(cls):      # a class added after this table was written
        return ("linf", "l2")
    return ("unknown",)


@dataclass(frozen=True)
class TorchAttack:
    """One torchattacks class with fixed arguments; called like our attacks."""
    class_name: str
    norm: str = "linf"
    kwargs: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", canonical_norm(self.norm))
        supported = NORMS.get(self.class_name, ())
        if supported and self.norm not in supported:
            raise AttackConfigError(f"torchattacks:{self.class_name} is a {'/'.join(supported)} attack, not {self.norm}")

    @property
    def name(self) -> str:
        return f"torchattacks:{self.class_name}"

    def build(self, model: torch.nn.Module, eps: float, n_classes: int, seed: int):
        cls = attack_classes()[self.class_name]
        args = _class_args(cls)
        kw = dict(self.kwargs)
        eps_arg = _EPS_ARG.get(self.class_name, "eps")
        if eps_arg in args:
            kw[eps_arg] = eps
        if "norm" in args:
            kw["norm"] = _TA_NORM[self.norm]
        if "n_classes" in args and "n_classes" not in kw:
            kw["n_classes"] = n_classes
        if "seed" in args and kw.get("seed") is None:
            kw["seed"] = seed
        atk = cls(model, **kw)
        return atk

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 seeds: torch.Tensor | None = None, target: torch.Tensor | None = None,
                 verify: bool = True, **_: Any) -> AttackOutput:
        check_eps(eps, self.norm)
        n = x.shape[0]
        fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        if eps == 0 or n == 0:
            return AttackOutput(x.clone(), fooled, 0, 0)
        seed = int(seeds[0]) if seeds is not None and len(seeds) else 0
        with frozen(model), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            counter = PassCounter(model)       # made in eval mode: torchattacks restores what it finds
            torch.manual_seed(seed)
            with torch.no_grad():
                k = int(counter(x[:1]).shape[1])
            atk = self.build(counter, eps, k, seed)
            atk.set_device(x.device)
            if target is not None:
                atk.set_mode_targeted_by_label(quiet=True)
                adv = atk(x, target)
            else:
                adv = atk(x, y)
            adv = adv.detach().to(device=x.device, dtype=x.dtype)
            x_adv = x + clip_to_box(x, project(adv - x, eps, self.norm))
            if verify:
                with torch.no_grad():
                    pred = counter(x_adv).argmax(1)
                fooled = pred == target if target is not None else pred != y
        fwd, bwd = counter.counts()
        return AttackOutput(x_adv.detach(), fooled, fwd, bwd)


def _builder(class_name: str, cls: type):
    """A builder whose signature lists the class's own arguments (and our aliases for the shared
    options), so `create_attack` hands it exactly what it takes."""
    args = _class_args(cls)
    hidden = {"eps", _EPS_ARG.get(class_name, "eps"), "norm"}
    params = [inspect.Parameter("norm", inspect.Parameter.KEYWORD_ONLY, default="linf")]
    for name, p in args.items():
        if name in hidden or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                        default=None if p.default is inspect.Parameter.empty else p.default))
    for ours, theirs in _ALIASES.items():
        if theirs in args and ours not in args:
            params.append(inspect.Parameter(ours, inspect.Parameter.KEYWORD_ONLY, default=None))
    own = set(args)

    def build(norm: str = "linf", **kwargs: Any) -> TorchAttack:
        for ours, theirs in _ALIASES.items():
            if ours in kwargs and ours not in own:
                value = kwargs.pop(ours)
                if value is not None and kwargs.get(theirs) is None:
                    kwargs[theirs] = value
        unknown = set(kwargs) - own
        if unknown:
            raise TypeError(f"torchattacks.{class_name} takes no argument(s) {', '.join(sorted(unknown))}")
        return TorchAttack(class_name, norm, tuple(sorted((k, v) for k, v in kwargs.items() if v is not None)))

    build.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    build.__name__ = f"torchattacks_{class_name}"
    return build


def resolve(name: str) -> AttackEntry:
    """The registry entry for torchattacks:NAME (NAME case-insensitive)."""
    classes = attack_classes()
    by_lower = {k.lower(): k for k in classes}
    key = by_lower.get(name.strip().lower())
    if key is None:
        import difflib
        if name.strip() in _WRAPPERS:
            raise KeyError(f"torchattacks:{name} is a wrapper of other attacks, not an attack")
        close = difflib.get_close_matches(name, list(classes), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join('torchattacks:' + c for c in close)}?" if close else \
            f"; known: {', '.join(sorted(classes))}"
        raise KeyError(f"unknown attack torchattacks:{name}{hint}")
    cls = classes[key]
    doc = (inspect.getdoc(cls) or "").strip().splitlines()
    summary = doc[0] if doc else key
    return AttackEntry(f"torchattacks:{key}", _builder(key, cls), norms_of(key, cls),
                       f"torchattacks {key}: {summary}", white_box=key not in _BLACK_BOX, batch_dependent=True)


def _shown_default(name: str, p: inspect.Parameter) -> Any:
    if name == "n_classes":
        return "from the model's logits"
    if name == "seed":
        return "from the run's seed"
    return None if p.default is inspect.Parameter.empty else p.default


def list_torchattacks() -> list[dict[str, Any]]:
    """Every torchattacks attack: name, norms, white_box, and arguments with their defaults (eps, set per
    call, and model left out). Empty if torchattacks is not installed. For `robust-bench list attacks`."""
    try:
        classes = attack_classes()
    except ImportError:
        return []
    out = []
    for key in sorted(classes, key=str.lower):
        args = _class_args(classes[key])
        hidden = {"eps", _EPS_ARG.get(key, "eps"), "norm"}
        out.append({"name": f"torchattacks:{key}", "norms": norms_of(key, classes[key]),
                    "white_box": key not in _BLACK_BOX, "batch_dependent": True,
                    "bounded": _EPS_ARG.get(key, "eps") in args,
                    "args": {k: _shown_default(k, p) for k, p in args.items() if k not in hidden}})
    return out


__all__ = ["NORMS", "TorchAttack", "attack_classes", "list_torchattacks", "norms_of", "resolve"]
