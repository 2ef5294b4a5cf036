"""Registry-wide attack contracts (issue 10), swept over EVERY registered attack and every torchattacks
class the resolver accepts under linf/l2, never a hand-written list of them."""
from __future__ import annotations

import pytest

from attacks import attack_names, get_attack_entry

BATCH_NOTE = "(batch-dependent: results depend on --batch-size)"


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
