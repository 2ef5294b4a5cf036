"""Suites: many models x data sets x attack settings from one YAML file, one stored run each.

    models: [digits-cnn, digits-cnn-at]          # or {name: arch.py:f, weights: w.pt, mean: [...], std: [...]}
    datasets: [digits]                           # optional: default = each model's own data set
    attacks:                                     # one run per entry (per model and data set)
      - {attack: fgsm, eps: [0.05, 0.1]}
      - {attack: pgd, steps: 20, restarts: 2, eps: [0.05, 0.1], norm: linf}
    settings: {n_examples: 200, subset: random, seed: 0, batch_size: 128, data_dir: ~/data}

Runs already complete in the store are skipped (they are found by their arguments, like any rerun);
an interrupted suite resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from .engine import AttackSpec, RunSpec
from .errors import UserError
from .models import ModelOptions

_SETTINGS = {"n_examples", "subset", "seed", "batch_size", "data_dir", "split", "device", "precision",
             "channels_last", "tag"}
_ATTACK_KEYS = {"attack", "attacks", "eps", "norm"}


def _eps(value: Any) -> tuple[float, ...]:
    from .cli.options import parse_number
    items = value if isinstance(value, list) else [value]
    return tuple(parse_number(str(v), "eps") for v in items)


def load_suite(path: str | os.PathLike[str], base: RunSpec | None = None) -> list[RunSpec]:
    import yaml
    p = Path(path)
    if not p.is_file():
        raise UserError(f"suite file not found: {p}")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict) or "models" not in doc:
        raise UserError(f"{p}: a suite needs a `models:` list (see robust-bench run --help)")
    unknown_keys = set(doc) - {"models", "datasets", "attacks", "settings"}
    if unknown_keys:
        raise UserError(f"{p}: unknown keys {', '.join(sorted(unknown_keys))}")
    settings = dict(doc.get("settings") or {})
    bad = set(settings) - _SETTINGS
    if bad:
        raise UserError(f"{p}: unknown settings {', '.join(sorted(bad))} (allowed: {', '.join(sorted(_SETTINGS))})")
    base = dataclasses.replace(base or RunSpec(), **settings)
    datasets = doc.get("datasets") or [None]
    attack_entries = doc.get("attacks") or [{"attack": "fgsm"}, {"attack": "pgd"}]
    specs = []
    for m in doc["models"]:
        if isinstance(m, str):
            name, opts = m, base.model_options
        elif isinstance(m, dict) and "name" in m:
            extra = {k: v for k, v in m.items() if k != "name"}
            for key in ("mean", "std"):
                if key in extra:
                    extra[key] = tuple(float(v) for v in extra[key])
            try:
                opts = dataclasses.replace(base.model_options, **extra)
            except TypeError:
                raise UserError(f"{p}: bad model options {sorted(extra)}") from None
            name = m["name"]
        else:
            raise UserError(f"{p}: each model is a name or a mapping with `name:`")
        for ds in datasets:
            for entry in attack_entries:
                if isinstance(entry, str):
                    entry = {"attack": entry}
                names = entry.get("attacks") or entry.get("attack")
                if not names:
                    raise UserError(f"{p}: attack entry {entry} names no attack")
                names = names if isinstance(names, list) else [a.strip() for a in str(names).split(",")]
                params = tuple(sorted((k, v) for k, v in entry.items() if k not in _ATTACK_KEYS))
                spec = dataclasses.replace(
                    base, models=(name,), dataset=ds if ds is not None else base.dataset,
                    attacks=tuple(AttackSpec(a, params) for a in names), model_options=opts,
                    norm=entry.get("norm", base.norm),
                    eps=_eps(entry["eps"]) if "eps" in entry else base.eps)
                specs.append(spec)
    return specs
