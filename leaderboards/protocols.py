"""Evaluation protocols: what a leaderboard measures, so that its rows are comparable.

A protocol is a small YAML file (see `leaderboards/protocols/*.yaml`):

    name: cifar10-linf-8
    title: CIFAR-10, L-inf, eps = 8/255
    dataset: cifar10          # the data set name runs store
    split: test
    n_examples: 10000         # how many examples ...
    subset: first             # ... and which: `first` N, or a seeded `random` sample (then `seed`)
    dataset_size: 10000       # size of the split; lets a `random` protocol name its exact examples
    norm: linf                # linf | l2; omitted for corruption protocols
    eps: [8/255]              # fractions allowed; for corruptions, the severities
    attacks:                  # every attack the protocol runs, with the parameters it pins
      - name: pgd
        params: {steps: 50, restarts: 1, loss: ce}

A run matches a protocol when it evaluated exactly the protocol's examples of its data set and split,
under its norm, at every protocol eps, with every protocol attack whose stored parameters agree with the
ones the protocol lists (parameters a protocol does not list are not compared: list every one that
matters). A run may hold more attacks or eps than the protocol; the extra ones are not shown.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .threats import Threat, is_corruption, parse_number, same_eps

PROTOCOL_DIR = Path(__file__).resolve().parent / "protocols"
_KEYS = {"name", "title", "description", "dataset", "split", "n_examples", "subset", "seed", "dataset_size",
         "norm", "eps", "attacks"}


class ProtocolError(ValueError):
    """A protocol that cannot be found or read."""


@dataclass(frozen=True)
class ProtocolAttack:
    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True)
class Protocol:
    name: str
    dataset: str
    eps: tuple[float, ...]
    attacks: tuple[ProtocolAttack, ...]
    norm: str | None = None
    split: str = "test"
    n_examples: int | None = None
    subset: str = "first"
    seed: int = 0
    dataset_size: int | None = None
    title: str = ""
    description: str = ""
    source: str = field(default="", compare=False)

    @property
    def corruptions(self) -> bool:
        return all(is_corruption(a.name) for a in self.attacks)

    @property
    def threats(self) -> tuple[Threat, ...]:
        norm = self.norm or ""
        return tuple(Threat(a.name, norm, e) for a in self.attacks for e in self.eps)

    def expected_indices(self) -> np.ndarray | None:
        """The exact example indices the protocol evaluates, when they can be known without the data."""
        n, size = self.n_examples, self.dataset_size
        if n is None or (size is not None and n >= size):
            return np.arange(size, dtype=np.int64) if size is not None else None
        if self.subset == "first":
            return np.arange(n, dtype=np.int64)
        if size is None:
            return None
        # the engine's seeded sample (robustness.data.select_indices), restated here: leaderboards
        # never imports robustness
        rng = np.random.default_rng(self.seed)
        return np.sort(rng.choice(size, size=n, replace=False)).astype(np.int64)

    def matches(self, run_spec_json: Mapping[str, Any], model_rows: Sequence[Mapping[str, Any]], *,
                attack_params: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[bool, str]:
        """`protocol_matches(self, ...)`."""
        return protocol_matches(self, run_spec_json, model_rows, attack_params=attack_params)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "description": self.description, "dataset": self.dataset,
                "split": self.split, "n_examples": self.n_examples, "subset": self.subset, "seed": self.seed,
                "dataset_size": self.dataset_size, "norm": self.norm, "eps": list(self.eps),
                "attacks": [{"name": a.name, "params": dict(a.params)} for a in self.attacks]}


def protocol_names() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))


def _value(v: Any) -> Any:
    """YAML values of attack parameters: fractions written as strings become numbers."""
    if isinstance(v, str) and "/" in v:
        try:
            return parse_number(v)
        except ValueError:
            return v
    return v


def load_protocol(name_or_path: str | Path) -> Protocol:
    """A protocol by name (a file in leaderboards/protocols/) or by path to a YAML file."""
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        path = PROTOCOL_DIR / f"{text}.yaml"
        if not path.is_file():
            known = ", ".join(protocol_names()) or "none"
            raise ProtocolError(f"unknown protocol {text!r} (known: {known}; or pass a path to a .yaml file)")
    if not path.is_file():
        raise ProtocolError(f"no protocol file at {path}")
    try:
        import yaml
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ProtocolError(f"cannot read protocol {path}: {e}") from None
    except Exception as e:  # yaml.YAMLError and its subclasses
        raise ProtocolError(f"protocol {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    return protocol_from_dict(doc, source=str(path), default_name=path.stem)


def protocol_from_dict(doc: Any, *, source: str = "<dict>", default_name: str = "protocol") -> Protocol:
    where = f"protocol {source}"
    if not isinstance(doc, Mapping):
        raise ProtocolError(f"{where}: expected a mapping of keys to values")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise ProtocolError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} "
                            f"(known: {', '.join(sorted(_KEYS))})")
    for key in ("dataset", "eps", "attacks"):
        if doc.get(key) in (None, "", []):
            raise ProtocolError(f"{where}: `{key}` is required")
    eps_raw = doc["eps"] if isinstance(doc["eps"], list) else [doc["eps"]]
    try:
        eps = tuple(sorted({parse_number(e) for e in eps_raw}))
    except ValueError as e:
        raise ProtocolError(f"{where}: bad eps: {e}") from None
    attacks = []
    for a in doc["attacks"]:
        if isinstance(a, str):
            a = {"name": a}
        if not isinstance(a, Mapping) or not a.get("name"):
            raise ProtocolError(f"{where}: each attack needs a `name` (and optional `params`)")
        extra = set(a) - {"name", "params"}
        if extra:
            raise ProtocolError(f"{where}: attack {a['name']}: unknown key(s) {', '.join(sorted(extra))}")
        params = a.get("params") or {}
        if not isinstance(params, Mapping):
            raise ProtocolError(f"{where}: attack {a['name']}: `params` must be a mapping")
        attacks.append(ProtocolAttack(str(a["name"]), tuple(sorted((str(k), _value(v)) for k, v in params.items()))))
    names = [a.name for a in attacks]
    if len(set(names)) != len(names):
        raise ProtocolError(f"{where}: an attack is listed twice")
    norm = doc.get("norm")
    if norm is not None and str(norm).lower() not in ("linf", "l2"):
        raise ProtocolError(f"{where}: norm must be linf or l2 (omit it for corruptions), got {norm!r}")
    corrupt = [is_corruption(n) for n in names]
    if any(corrupt) and not all(corrupt):
        raise ProtocolError(f"{where}: mixes corruptions and attacks; make two protocols")
    if norm is None and not all(corrupt):
        raise ProtocolError(f"{where}: `norm` is required for attacks")
    subset = str(doc.get("subset", "first"))
    if subset not in ("first", "random"):
        raise ProtocolError(f"{where}: subset must be first or random, got {subset!r}")

    def opt_int(key: str) -> int | None:
        v = doc.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ProtocolError(f"{where}: `{key}` must be a whole number >= 1, got {v!r}")
        return v
    seed = doc.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ProtocolError(f"{where}: `seed` must be a whole number")
    return Protocol(name=str(doc.get("name") or default_name), dataset=str(doc["dataset"]), eps=eps,
                    attacks=tuple(attacks), norm=str(norm).lower() if norm is not None else None,
                    split=str(doc.get("split", "test")), n_examples=opt_int("n_examples"), subset=subset,
                    seed=seed, dataset_size=opt_int("dataset_size"), title=str(doc.get("title") or ""),
                    description=str(doc.get("description") or "").strip(), source=source)


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (a == b and type(a) is type(b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return same_eps(float(a), float(b))
    return a == b


def _model_reason(protocol: Protocol, spec: Mapping[str, Any], row: Mapping[str, Any]) -> str | None:
    model = row.get("model", "?")
    if row.get("dataset") != protocol.dataset:
        return f"{model}: data set {row.get('dataset')!r}, protocol needs {protocol.dataset!r}"
    split = spec.get("split", "test")
    if split != protocol.split:
        return f"{model}: split {split!r}, protocol needs {protocol.split!r}"
    info = row.get("info") or {}
    norm = info.get("norm") or spec.get("norm")
    if protocol.norm is not None and norm != protocol.norm:
        return f"{model}: norm {norm}, protocol needs {protocol.norm}"
    indices = np.asarray(row.get("indices") or [], dtype=np.int64)
    expected = protocol.expected_indices()
    if expected is not None:
        if indices.shape != expected.shape or not np.array_equal(indices, expected):
            return (f"{model}: other examples ({len(indices)} examples, protocol needs {len(expected)} "
                    f"{'first' if protocol.subset == 'first' else 'seeded random'} ones)")
    else:  # a random subset of a data set of unknown size: the spec must have asked for the same sample
        if protocol.n_examples is not None and len(indices) != protocol.n_examples:
            return f"{model}: {len(indices)} examples, protocol needs {protocol.n_examples}"
        if (spec.get("subset"), spec.get("seed")) != (protocol.subset, protocol.seed):
            return (f"{model}: examples chosen by subset={spec.get('subset')} seed={spec.get('seed')}, protocol "
                    f"needs subset={protocol.subset} seed={protocol.seed}")
    eps = info.get("eps") if info.get("eps") is not None else spec.get("eps")
    if eps is None:
        return f"{model}: the run does not record its eps"
    missing = [e for e in protocol.eps if not any(same_eps(e, float(x)) for x in eps)]
    if missing:
        return f"{model}: not evaluated at eps {', '.join(f'{e:g}' for e in missing)}"
    return None


def protocol_matches(protocol: Protocol, run_spec_json: Mapping[str, Any], model_rows: Sequence[Mapping[str, Any]],
                     *, attack_params: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[bool, str]:
    """Whether a stored run follows `protocol`: (True, "") or (False, the first reason it does not).

    `run_spec_json` is the run's stored spec, `model_rows` its `ResultStore.model_rows()` (pass one row to
    judge one model). `attack_params` (attack -> the parameters stored with its results, defaults
    included) lets parameters the user left at their defaults be compared too."""
    spec_attacks = {a.get("name"): dict(a.get("params") or {}) for a in run_spec_json.get("attacks") or []}
    for pa in protocol.attacks:
        if pa.name not in spec_attacks:
            return False, f"attack {pa.name} was not run"
        stored = dict(spec_attacks[pa.name])
        if attack_params and pa.name in attack_params:
            stored.update(attack_params[pa.name])
        for k, v in pa.params:
            if k not in stored:
                return False, f"attack {pa.name}: the run does not record {k} (protocol: {k}={v!r})"
            if not _same_value(stored[k], v):
                return False, f"attack {pa.name}: {k}={stored[k]!r}, protocol needs {k}={v!r}"
    if not model_rows:
        return False, "the run evaluated no model"
    for row in model_rows:
        reason = _model_reason(protocol, run_spec_json, row)
        if reason:
            return False, reason
    return True, ""
