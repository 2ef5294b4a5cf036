"""Registry-wide attack contracts (issue 10, "the torchvision habit"), swept over EVERY registered attack and
every torchattacks class the resolver accepts under linf/l2, never a hand-written list of them.

Each (attack, norm) is run on a tiny model trained here (an MLP with batch norm and dropout, so an attack
that forgets eval mode gets other logits and updates the running statistics) and checked against rules
written here, not against the attacks' own flags:
- the output lies in the eps-ball and in [0, 1], exactly up to float32 rounding of x + delta;
- eps 0 returns x unchanged and fools nothing;
- train/eval mode, every parameter's requires_grad, the batch-norm buffers and .grad are left as they were,
  and a model handed over in train mode is attacked in eval mode (same outcome as the eval model);
- verify=True flags are exact, verify=False flags are conservative, and after a re-check here both calls
  break exactly the same examples (the engine calls with verify=False and re-checks);
- the same seeds give the same outcome; the outcome of each example does not depend on the batch it is in
  (the batch is split unevenly in two), unless the entry says `batch_dependent`;
- passes are reported: forward > 0 at eps > 0; backward == 0 for black-box attacks, > 0 for the others.

An attack too slow for the sweep at its defaults gets small settings in OVERRIDES; one that is in neither
DEFAULTS_ARE_FAST nor OVERRIDES fails `test_every_swept_attack_has_settings` (and its own cases), so a newly
registered attack cannot go unswept."""
from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn as nn

from attacks import attack_names, create_attack, get_attack_entry

NORMS = ("linf", "l2", "l1", "l0")
EPS = {"linf": 0.1, "l2": 1.0, "l1": 4.0, "l0": 4}
BATCH_NOTE = "(batch-dependent: results depend on --batch-size)"

# registered attacks whose defaults already run in well under a second per call on the tiny model
DEFAULTS_ARE_FAST = {
    "fgsm", "pgd",
    *(f"torchattacks:{c}" for c in (
        "APGD", "APGDT", "BIM", "DIFGSM", "EOTPGD", "FAB", "FFGSM", "FGSM", "Jitter", "MIFGSM", "NIFGSM", "PGD",
        "PGDL2", "PGDRS", "PGDRSL2", "PIFGSM", "PIFGSMPP", "RFGSM", "SINIFGSM", "TIFGSM", "TPGD", "UPGD",
        "VMIFGSM", "VNIFGSM")),
}
# small settings for the rest (the contracts do not depend on the budget)
OVERRIDES: dict[str, dict[str, Any]] = {
    "apgd": {"steps": 10},
    "apgd-t": {"steps": 5, "n_target_classes": 3},
    "fab": {"steps": 10},
    "fmn": {"steps": 10},
    "square": {"n_queries": 100},
    "square-package": {"n_queries": 100},
    "autoattack": {"steps": 5, "n_target_classes": 2, "square_queries": 50},
    "autoattack-package": {"square_queries": 50},
    "torchattacks:CW": {"steps": 10},
    "torchattacks:DeepFool": {"steps": 10},
    "torchattacks:EADEN": {"binary_search_steps": 2, "max_iterations": 10},
    "torchattacks:SPSA": {"nb_sample": 16, "max_batch_size": 16},
    "torchattacks:Square": {"n_queries": 100},
    "torchattacks:AutoAttack": {},      # no budget arguments: run as it is, marked slow
    "pgd-l1": {"steps": 20},
    "sparse-rs": {"n_queries": 100},
    # adaptive families (attacks/eot.py, attacks/bpda.py), swept through FAMILIES below
    "eot:pgd": {"eot": 3},
    "bpda:pgd": {},
    "transfer:self:pgd": {},
}
# attack families resolved by prefix that the sweep covers too (each wraps a registered attack)
FAMILIES = ("eot:pgd", "bpda:pgd", "transfer:self:pgd")
SLOW = {"torchattacks:AutoAttack", "autoattack-package"}


def _swept_names() -> list[str]:
    """Every registered attack, and every torchattacks class the resolver maps to linf or l2."""
    names = list(attack_names()) + list(FAMILIES)
    try:
        from attacks.torchattacks_adapter import attack_classes, norms_of
        classes = attack_classes()
    except ImportError:
        return names
    # torchattacks under linf/l2 only: its L1/L0 classes are slow (JSMA) or seed outside torch (Pixle)
    names += [f"torchattacks:{c}" for c, cls in sorted(classes.items()) if set(norms_of(c, cls)) & {"linf", "l2"}]
    return names


def _cases() -> list[Any]:
    out = []
    for name in _swept_names():
        for norm in get_attack_entry(name).norms:
            if norm in NORMS and not (name.startswith("torchattacks:") and norm not in ("linf", "l2")):
                marks = [pytest.mark.slow] if name in SLOW else []
                out.append(pytest.param(name, norm, id=f"{name}-{norm}", marks=marks))
    return out


CASES = _cases()


# ---- the tiny model and its data ----

class TinyNet(nn.Module):
    """3x16x16 -> 10 classes. Batch norm and dropout make train mode visible; three channels and 16 pixels
    suit the torchattacks classes that assume RGB (TIFGSM's depthwise kernel) or resize (DIFGSM)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                  nn.Dropout(0.3), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _images(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from robustness.data import load_dataset
    ds = load_dataset("digits", split=split).dataset
    x = torch.nn.functional.interpolate(ds.x, scale_factor=2, mode="nearest").repeat(1, 3, 1, 1)
    return x.contiguous(), ds.y


@pytest.fixture(scope="module")
def tiny():
    """(model in eval mode, 24 clean-correct test examples, labels). Trained here in about a second."""
    torch.manual_seed(0)
    xt, yt = _images("train")
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    model.eval()
    x, y = _images("test")
    with torch.no_grad():
        ok = (model(x).argmax(1) == y).nonzero().squeeze(1)
    assert len(ok) > 300, "the tiny model must classify the test digits"
    return model, x[ok[:24]], y[ok[:24]]


def _recheck(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, eps: float,
             norm: str) -> torch.Tensor:
    """The threat model, exactly: inside [0, 1] and within eps, up to float32 rounding of x + delta (half
    an ulp per pixel, at most 2^-24 for pixels <= 1; L2 adds sqrt(D) of them). Returns misclassified."""
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert bool(torch.isfinite(x_adv).all())
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    d = (x_adv - x).flatten(1).double()
    ulp = 2.0 ** -24
    if norm == "linf":
        excess = float((d.abs().amax(1) - eps).max())
        assert excess <= eps * 2.0 ** -23 + ulp, f"L-inf {excess:.3g} beyond eps={eps}"
    elif norm == "l1":
        excess = float((d.abs().sum(1) - eps).max())
        assert excess <= eps * 2.0 ** -20 + d.shape[1] * ulp, f"L1 {excess:.3g} beyond eps={eps}"
    elif norm == "l0":   # pixel positions changed in any channel
        moved = int((x_adv != x).any(1).flatten(1).sum(1).max())
        assert moved <= eps, f"L0: {moved} pixels changed, eps={eps}"
    else:
        excess = float((d.norm(dim=1) - eps).max())
        assert excess <= eps * 2.0 ** -20 + math.sqrt(d.shape[1]) * ulp, f"L2 {excess:.3g} beyond eps={eps}"
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def _build(name: str, norm: str):
    if name not in OVERRIDES and name not in DEFAULTS_ARE_FAST:
        pytest.fail(f"attack {name} is registered but has no sweep settings: add it to DEFAULTS_ARE_FAST "
                    f"or OVERRIDES in {__name__}")
    return create_attack(name, norm=norm, **OVERRIDES.get(name, {}))


def _mixed_flags_train_copy(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).train()
    params = list(m.parameters())
    for i, p in enumerate(params):
        p.requires_grad_(i % 2 == 0)
    return m


def test_every_swept_attack_has_settings():
    missing = [n for n in _swept_names() if n not in OVERRIDES and n not in DEFAULTS_ARE_FAST]
    assert not missing, f"registered attacks without sweep settings: {missing}"
    assert any(name == "pgd" for name, *_ in (c.values for c in CASES))


@pytest.mark.parametrize("name, norm", CASES)
def test_attack_contract(tiny, name, norm):
    model, x, y = tiny
    entry = get_attack_entry(name)
    attack = _build(name, norm)
    eps = EPS[norm]
    n = len(y)
    seeds = torch.arange(1000, 1000 + n)

    # verify=True: exact flags
    full = attack(model, x, y, eps, seeds=seeds, verify=True)
    broken = _recheck(model, x, y, full.x_adv, eps, norm)
    assert torch.equal(full.fooled.cpu(), broken), "verify=True flags must be exactly the re-check"

    # passes
    assert full.forward > 0, "an attack at eps > 0 on clean-correct examples does forward passes"
    if entry.white_box:
        assert full.backward > 0, "a white-box attack reports its backward passes"
    else:
        assert full.backward == 0, "a black-box attack takes no gradients"

    # a train-mode model with mixed requires_grad: attacked in eval mode (same seeds, same outcome), and
    # mode, flags, buffers and .grad left as they were
    trained = _mixed_flags_train_copy(model)
    flags = [p.requires_grad for p in trained.parameters()]
    buffers = {k: v.clone() for k, v in trained.state_dict().items()}
    again = attack(trained, x, y, eps, seeds=seeds, verify=True)
    assert trained.training and all(m.training for m in trained.modules()), "train mode not restored"
    assert [p.requires_grad for p in trained.parameters()] == flags, "requires_grad not restored"
    assert all(p.grad is None for p in trained.parameters()), "parameter gradients accumulated"
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in buffers.items()), \
        "the model's weights or batch-norm statistics changed: attacked in train mode?"
    assert torch.equal(_recheck(model, x, y, again.x_adv, eps, norm), broken), \
        "same seeds must give the same outcome (and a train-mode model must be attacked in eval mode)"

    # verify=False: conservative flags, same outcome after the re-check
    fast = attack(model, x, y, eps, seeds=seeds, verify=False)
    broken_fast = _recheck(model, x, y, fast.x_adv, eps, norm)
    assert not bool((fast.fooled.cpu() & ~broken_fast).any()), "verify=False flagged an example it did not fool"
    assert torch.equal(broken_fast, broken), "verify=False must hand back points as strong as verify=True"

    # batch composition: split unevenly, each example with its own seed
    k = n // 3
    parts = [attack(model, x[s], y[s], eps, seeds=seeds[s], verify=False) for s in (slice(0, k), slice(k, n))]
    split = torch.cat([_recheck(model, x[s], y[s], p.x_adv, eps, norm)
                       for s, p in zip((slice(0, k), slice(k, n)), parts)])
    if not torch.equal(split, broken_fast):
        assert entry.batch_dependent, (f"{name}: outcome depends on the batch (split {int(split.sum())} vs whole "
                                       f"{int(broken_fast.sum())} broken) but the entry is not batch_dependent")

    # eps 0 changes nothing
    zero = attack(model, x, y, 0.0, seeds=seeds, verify=True)
    assert torch.equal(zero.x_adv, x) and not bool(zero.fooled.any())


def test_the_sweep_is_not_vacuous(tiny):
    """At the sweep's eps our PGD breaks some examples but not all, so the outcome comparisons above
    compare something."""
    model, x, y = tiny
    for norm in NORMS:
        name = {"l1": "pgd-l1", "l0": "sparse-rs"}.get(norm, "pgd")
        out = create_attack(name, norm=norm, **OVERRIDES.get(name, {}))(model, x, y, EPS[norm],
                                                                        seeds=torch.arange(len(y)))
        broken = _recheck(model, x, y, out.x_adv, EPS[norm], norm)
        assert 0 < int(broken.sum()) < len(y), (norm, int(broken.sum()))


def test_listing_marks_exactly_the_batch_dependent_attacks(cli):
    res = cli("list", "attacks")
    assert res.code == 0
    lines = res.out.splitlines()
    for name in attack_names():
        line = next(ln for ln in lines if ln.split() and ln.split()[0] == name)
        assert (BATCH_NOTE in line) == get_attack_entry(name).batch_dependent, line
    if any(ln.startswith("torchattacks (") for ln in lines):
        assert BATCH_NOTE in next(ln for ln in lines if ln.startswith("torchattacks ("))
    # the third-party adapters cannot be seeded per example; our own attacks can
    assert get_attack_entry("autoattack-package").batch_dependent
    for ours in ("fgsm", "pgd", "apgd", "apgd-t", "fab"):
        assert not get_attack_entry(ours).batch_dependent, ours
    pytest.importorskip("torchattacks")
    assert get_attack_entry("torchattacks:PGD").batch_dependent
