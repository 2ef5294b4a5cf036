"""The PGD/FGSM ascent loop's cheaper bookkeeping (one host sync per step, batch copies only in steps where
an example was fooled) computes exactly what the textbook loop computes: the reference below is written
from Madry et al. 2018 with per-example early stop done the plain way (boolean masks, the batch re-indexed
every step), and both must agree bit for bit on real images, in both norms, targeted or not, with and
without early stop."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attacks._core import random_start
from attacks.pgd import iterate

from .conftest import CIFAR_TEST, RESNET20, need


def reference_loop(model, x, y, eps, alpha, steps, start, norm="linf", early_stop=True, target=None):
    """Returns (x_adv, fooled): each example's first fooling iterate (with early stop; without, the last
    fooling one), else the final iterate."""
    goal = y if target is None else target
    x_adv, fooled = x.clone(), torch.zeros(len(y), dtype=torch.bool)
    active = torch.arange(len(y))
    delta = start.clone()
    for _ in range(steps):
        xs = x[active]
        xa = (xs + delta).detach().requires_grad_(True)
        logits = model(xa)
        pred = logits.detach().argmax(1)
        done = pred != goal[active] if target is None else pred == goal[active]
        x_adv[active[done]] = xa.detach()[done]
        fooled[active[done]] = True
        if early_stop and done.all():
            return x_adv, fooled
        loss = F.cross_entropy(logits.float(), goal[active], reduction="none")
        if target is not None:
            loss = -loss
        grad, = torch.autograd.grad(loss.sum(), xa)
        if norm == "linf":
            delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
        else:
            g = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12
            delta = delta + alpha * (grad / g)   # the unit step, then scaled (the rounding order matters bitwise)
            delta = delta * (eps / (delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)).clamp(max=1.0)
        delta = ((xs + delta).clamp(0, 1) - xs).detach()
        if early_stop:
            active, delta = active[~done], delta[~done]
    keep = ~fooled[active]
    x_adv[active[keep]] = (x[active] + delta)[keep]
    return x_adv, fooled


@pytest.fixture(scope="module")
def real():
    need(RESNET20), need(CIFAR_TEST)
    from robustness.archs import resnet20
    from robustness.data import load_dataset
    from robustness.models import Normalized, extract_state_dict, load_file
    from robustness.models.checkpoints import load_into
    net = resnet20()
    load_into(net, extract_state_dict(load_file(RESNET20), str(RESNET20)), str(RESNET20))
    model = Normalized(net, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    data = load_dataset(str(CIFAR_TEST)).dataset
    xs, ys = zip(*(data[i] for i in range(48)))
    return model, torch.stack(xs), torch.tensor(ys)


@pytest.mark.parametrize("norm,eps", [("linf", 1 / 255), ("l2", 0.1)])
@pytest.mark.parametrize("early_stop", [True, False])
def test_loop_equals_the_textbook_loop_on_real_images(real, norm, eps, early_stop):
    model, x, y = real
    steps, alpha = 6, 2.5 * eps / 6
    start = random_start(x, eps, norm, torch.arange(len(y)))
    out = iterate(model, x, y, eps, norm=norm, steps=steps, step_size=alpha, start=start,
                  early_stop=early_stop, verify=False)
    want_x, want_fooled = reference_loop(model, x, y, eps, alpha, steps, start, norm, early_stop)
    assert 0 < int(want_fooled.sum()) < len(y)    # some examples stop early, some run every step
    assert torch.equal(out.fooled, want_fooled)
    assert torch.equal(out.x_adv, want_x)


def test_targeted_loop_equals_the_textbook_loop(real):
    model, x, y = real
    target = (y + 1) % 10
    eps, steps = 4 / 255, 5
    start = random_start(x, eps, "linf", torch.arange(len(y)) + 7)
    out = iterate(model, x, y, eps, norm="linf", steps=steps, step_size=2.5 * eps / steps, targeted=True,
                  target=target, start=start, verify=False)
    want_x, want_fooled = reference_loop(model, x, y, eps, 2.5 * eps / steps, steps, start, target=target)
    assert 0 < int(want_fooled.sum()) < len(y)
    assert torch.equal(out.fooled, want_fooled) and torch.equal(out.x_adv, want_x)


def test_channels_last_survives_the_compaction(real):
    """Rows are dropped by index, which keeps the memory format (index_select would not)."""
    model, x, y = real
    xc = x.contiguous(memory_format=torch.channels_last)
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, z):
            seen.append(z.is_contiguous(memory_format=torch.channels_last))
            return model(z)
    start = random_start(xc, 1 / 255, "linf", torch.arange(len(y))).contiguous(memory_format=torch.channels_last)
    iterate(Spy(), xc, y, 1 / 255, norm="linf", steps=4, step_size=0.25 / 255, start=start, verify=False)
    assert len(seen) == 4 and all(seen)
