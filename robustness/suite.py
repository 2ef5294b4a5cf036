"""Suites: many models x data sets x attack settings from one YAML file, one stored run each.

    models: [digits-cnn, digits-cnn-at]          # or {name: arch.py:f, weights: w.pt, mean: [...], std: [...]}
    datasets: [digits]                           # optional: default = each model's own data set
    attacks:                                     # one run per entry (per model and data set)
      - {attack: fgsm, eps: [0.05, 0.1]}
      - {attack: pgd, steps: 20, restarts: 2, eps: [0.05, 0.1], norm: linf}
    settings: {n_examples: 200, subset: random, seed: 0, batch_size: 128, data_dir: ~/data}

Runs already complete in the store are skipped (they are found by their arguments, like any rerun);
an interrupted suite resumes where it stopped. Every entry is checked (types, model and data set names,
attacks and their settings) before the first run starts, so a typo in the last entry cannot leave the
first ones stored and the suite half done.
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


_TYPES: dict[str, tuple[type, ...]] = {"n_examples": (int,), "seed": (int,), "batch_size": (int, str),
                                       "data_dir": (str,), "split": (str,), "device": (str,), "precision": (str,),
                                       "channels_last": (bool,), "subset": (str,), "tag": (str,)}


def _eps(value: Any, where: str) -> tuple[float, ...]:
    from leaderboards.threats import parse_number   # the store's parser: one rule for eps everywhere
    items = value if isinstance(value, list) else [value]
    for v in items:
        if isinstance(v, (bool, list, dict)) or v is None:
            raise UserError(f"{where}: eps must be numbers or fractions like 8/255, got {v!r}")
    try:
        return tuple(parse_number(str(v)) for v in items)
    except ValueError:
        raise UserError(f"{where}: bad eps {value!r}: expected numbers or fractions like 8/255") from None


def _settings(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: `settings:` must be a mapping, e.g. {{n_examples: 200, seed: 0}}")
    bad = set(raw) - _SETTINGS
    if bad:
        raise UserError(f"{where}: unknown settings {', '.join(sorted(map(str, bad)))} "
                        f"(allowed: {', '.join(sorted(_SETTINGS))})")
    for key, value in raw.items():
        types = _TYPES[key]
        ok = value is None and key in ("n_examples", "data_dir", "tag") or \
            isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if key == "batch_size" and isinstance(value, str) and value != "auto":
            ok = False
        if not ok:
            want = {"n_examples": "a whole number", "seed": "a whole number", "batch_size": "a whole number or auto",
                    "channels_last": "true or false"}.get(key, "text")
            raise UserError(f"{where}: setting {key} must be {want}, got {value!r}")
    return dict(raw)


def _names(value: Any, what: str, where: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: `{what}:` must be a non-empty list, got {value!r}")
    return value


def validate(specs: list[RunSpec], where: str = "suite") -> None:
    """Check every run of a suite without running any: spec rules, model and data set names, attacks."""
    import dataclasses as dc

    from .data import check_dataset
    from .models import check_model
    from .preparation import check_corruptions, resolve_attacks
    for spec in specs:
        spec.check()
        for name in spec.models:
            check_model(name, spec.model_options)
        if spec.dataset is not None:
            check_dataset(spec.dataset, data_dir=spec.data_dir)
        check_corruptions(spec)
        try:
            resolve_attacks(dc.replace(spec))
        except KeyError as e:   # the attack registry's unknown-name error
            raise UserError(f"{where}: {e.args[0] if e.args else e}") from None


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
    settings = _settings(doc.get("settings"), str(p))
    base = dataclasses.replace(base or RunSpec(), **settings)
    datasets = _names(doc["datasets"], "datasets", str(p)) if doc.get("datasets") is not None else [None]
    for ds in datasets:
        if ds is not None and not isinstance(ds, str):
            raise UserError(f"{p}: each data set is a name or a path, got {ds!r}")
    attack_entries = doc.get("attacks")
    attack_entries = [{"attack": "fgsm"}, {"attack": "pgd"}] if attack_entries is None else \
        _names(attack_entries, "attacks", str(p))
    specs = []
    for m in _names(doc["models"], "models", str(p)):
        if isinstance(m, str):
            name, opts = m, base.model_options
        elif isinstance(m, dict) and isinstance(m.get("name"), str):
            extra = {k: v for k, v in m.items() if k != "name"}
            try:
                for key in ("mean", "std"):
                    if key in extra:
                        extra[key] = tuple(float(v) for v in extra[key])
                opts = dataclasses.replace(base.model_options, **extra)
            except (TypeError, ValueError):
                raise UserError(f"{p}: bad model options {sorted(extra)} for {m['name']}") from None
            name = m["name"]
        else:
            raise UserError(f"{p}: each model is a name or a mapping with `name:`, got {m!r}")
        for ds in datasets:
            for entry in attack_entries:
                if isinstance(entry, str):
                    entry = {"attack": entry}
                if not isinstance(entry, dict):
                    raise UserError(f"{p}: each attack entry is a name or a mapping with `attack:`, got {entry!r}")
                names = entry.get("attacks") or entry.get("attack")
                if not names:
                    raise UserError(f"{p}: attack entry {entry} names no attack")
                names = names if isinstance(names, list) else [a.strip() for a in str(names).split(",")]
                if not all(isinstance(a, str) and a for a in names):
                    raise UserError(f"{p}: attack names must be text, got {names!r}")
                norm = entry.get("norm", base.norm)
                if not isinstance(norm, str):
                    raise UserError(f"{p}: norm must be linf or l2, got {norm!r}")
                params = tuple(sorted((k, v) for k, v in entry.items() if k not in _ATTACK_KEYS))
                spec = dataclasses.replace(
                    base, models=(name,), dataset=ds if ds is not None else base.dataset,
                    attacks=tuple(AttackSpec(a, params) for a in names), model_options=opts, norm=norm,
                    eps=_eps(entry["eps"], str(p)) if "eps" in entry else base.eps)
                specs.append(spec)
    validate(specs, str(p))
    return specs
