"""Synthetic result stores for tests, benchmarks and demos of the plots (no model is run).

Each example gets a difficulty and each model a robustness; an example is clean-correct when the model is
good enough for it, and breaks at the smallest eps (severity) the model cannot withstand. The outcomes are
written through the normal store API, so everything that reads a store sees an ordinary run.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .records import summarize
from .store import Cost, Outcome, ResultStore


def add_synthetic_run(store: ResultStore, *, models: Mapping[str, float], attacks: Sequence[str],
                      eps: Sequence[float], n: int, dataset: str = "synthetic", norm: str = "linf",
                      seed: int = 0, tag: str | None = None, info: Mapping[str, Mapping[str, Any]] | None = None,
                      attack_strength: Mapping[str, float] | None = None, spec: Mapping[str, Any] | None = None,
                      indices: Sequence[int] | None = None, run_key: str | None = None) -> str:
    """Write one complete run: `models` maps a name to a robustness in [0, 1]; returns the run id."""
    rng = np.random.default_rng(seed)
    eps = sorted(float(e) for e in eps)
    idx = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    difficulty = rng.random(idx.size)
    run_spec = {"models": list(models), "dataset": dataset, "split": "test", "norm": norm, "eps": eps,
                "n_examples": int(idx.size), "subset": "first", "seed": seed,
                "attacks": [{"name": a, "params": {}} for a in attacks]}
    run_spec.update(spec or {})
    run_id = store.create_run(run_key or f"synthetic-{seed}-{tag}-{rng.random()}", run_spec,
                              {"synthetic": True, "seed": seed}, tag)
    strength = dict(attack_strength or {})
    results = []
    top = max(eps) if eps else 1.0
    for m_i, (model, robustness) in enumerate(models.items()):
        minfo = {"model": {"name": model, "arch": None, "extra": {}}, "dataset": {"name": dataset},
                 "eps": eps, "norm": norm}
        if info and model in info:
            minfo = {**minfo, **info[model]}
        store.register_model(run_id, model, dataset, minfo, idx.tolist())
        clean = difficulty < 0.6 + 0.39 * robustness
        outcomes: list[Outcome] = []
        costs: list[Cost] = []
        per_attack: dict[str, np.ndarray] = {}
        for a_i, attack in enumerate(attacks):
            s = strength.get(attack, 1.0 + 0.1 * a_i)
            # the eps at which each example breaks: later for robust models and easy examples
            noise = np.random.default_rng([seed, m_i, a_i]).random(idx.size)
            limit = top * (0.15 + 1.6 * robustness) * (1.15 - difficulty) * (0.7 + 0.6 * noise) / s
            broken = np.full(idx.size, np.nan)
            for e in eps:
                broken[np.isnan(broken) & (limit < e)] = e
            broken[~clean] = 0.0 if eps else np.nan
            per_attack[attack] = broken
            outcomes.extend(Outcome(attack, int(i), bool(c), None if np.isnan(b) else float(b))
                            for i, c, b in zip(idx.tolist(), clean.tolist(), broken.tolist()))
            costs.extend(Cost(attack, e, 0.001, int(idx.size), int(idx.size)) for e in eps)
        store.write_batch(run_id, model, 0, outcomes, costs)
        for attack, broken in per_attack.items():
            for e in eps:
                results.append(summarize(run_id=run_id, model=model, dataset=dataset, attack=attack, norm=norm,
                                         eps=e, index=idx, clean_correct=clean, broken_eps=broken, seconds=0.001,
                                         forward=int(idx.size), backward=int(idx.size), params={"norm": norm},
                                         keep_examples=False))
    store.finish_run(run_id, results)
    return run_id
