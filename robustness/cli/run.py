"""`robust-bench run`: evaluate models under attacks and store the per-example outcomes."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..errors import UserError
from .options import add_model_options, parse_channels, parse_eps_list, parse_kv, parse_list, positive_int

if TYPE_CHECKING:  # torch-heavy modules load when the command runs, not when the CLI starts
    from leaderboards import ThreatResult
    from ..specs import RunSpec

EXAMPLES = """examples:
  robust-bench run                                   # built-in digits models, FGSM and PGD (offline)
  robust-bench run --model resnet50 --attack pgd --dataset imagenet --data-dir /data/imagenet --n-examples 1000
  robust-bench run --model arch.py:resnet20 --weights ckpt.th --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 \\
      --dataset path/to/cifar10/test --eps 1/255,8/255
  robust-bench run --model ckpt.pt                   # a checkpoint written by robust-bench train
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="evaluate models under attacks (default: the built-in offline demo)",
                       description="Evaluate each model on a data set under each attack at each eps. Robust "
                       "accuracy is per example: only examples still classified correctly are attacked, and an "
                       "example broken at a smaller eps counts as broken at every larger one. Results go to an "
                       "SQLite store; rerunning an interrupted command (Ctrl-C, SIGTERM) resumes it. The table "
                       "shows robust accuracy % per eps with its 95% Wilson interval; its last column, passes/ex "
                       "fwd+bwd, is the model's forward and backward passes per example that row's attack spent "
                       "over all its eps (the engine's re-check of each adversarial example included): the cost of "
                       "the number, comparable across attacks, models and machines.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to evaluate")
    g.add_argument("--model", default="digits-cnn,digits-cnn-at",
                   help="comma-separated models: a registered or torchvision name (resnet50), robustbench:NAME, "
                        "path/to/file.py:factory, or a checkpoint/TorchScript/torch.export file "
                        "(default: %(default)s; see `robust-bench list models`)")
    g.add_argument("--dataset", help="a named data set (see `robust-bench list datasets`), an image folder, or a "
                                     ".npz/.npy file (default: the model's own data set)")
    g.add_argument("--data-dir", help="root folder of a named data set (local copy; no download needed)")
    g.add_argument("--dataset-name", help="what to call an image folder or .npz/.npy data set in results; its "
                                          "content digest is appended (default: the folder's or file's name, "
                                          "e.g. test#1f2e3d4c)")
    g.add_argument("--split", default="test", choices=("test", "train"), help="data split (default: test)")
    g.add_argument("--n-examples", type=positive_int, help="evaluate a deterministic subset of N examples")
    g.add_argument("--subset", default="random", choices=("random", "first"),
                   help="random: a seeded sample (default); first: the first N (RobustBench's protocol)")
    a = p.add_argument_group("threat model")
    a.add_argument("--attack", action="append", help="comma-separated attacks, each evaluated on its own; may be "
                                                      "repeated (default: fgsm,pgd; see `robust-bench list attacks`)")
    a.add_argument("--norm", default="linf", help="perturbation norm: linf (default), l2, l1 or l0 (eps counts "
                                                  "pixels; attacks pgd-l1, sparse-rs); several, e.g. linf,l2, "
                                                  "evaluate each (its own rows and stored run) and the union")
    a.add_argument("--eps", action="append", help="comma-separated budgets, fractions accepted: 1/255,2/255,8/255; "
                                 "with several norms one per norm: --eps linf=8/255 --eps l2=0.5 "
                                 "(default: a few standard values for the data set)")
    a.add_argument("--steps", type=positive_int, help="iterations of iterative attacks (PGD default: 10)")
    a.add_argument("--step-size", help="absolute step size, fractions accepted (PGD default: 2.5*eps/steps)")
    a.add_argument("--restarts", type=positive_int, help="random restarts (default: 1)")
    a.add_argument("--random-start", action=argparse.BooleanOptionalAction, default=None,
                   help="start PGD from a random point of the eps-ball (default: yes)")
    a.add_argument("--loss", choices=("ce", "margin", "dlr"), help="loss iterative attacks ascend (default: ce)")
    a.add_argument("--attack-args", help="extra key=value,... passed to every attack that takes them")
    a.add_argument("--min-norm", metavar="fmn[:STEPS]",
                   help="run the minimum-norm attack FMN once per example first (20 steps unless given); at each eps "
                        "its point projected onto the eps-ball, re-checked, breaks the example there and the attacks "
                        "run only on the rest: never weaker than without, rows credit fmn (docs/BENCHMARKS.md)")
    a.add_argument("--adaptive", action="store_true",
                   help="when a model check fires, add adaptive attacks as rows of their own: eot:ATTACK for a "
                        "randomized forward, bpda:ATTACK and transfer:self:pgd for masked gradients (docs/CHECKS.md)")
    a.add_argument("--bpda", metavar="MODULE.PATH",
                   help="the part of the model bpda: attacks approximate by the identity on the backward pass "
                        "(submodule paths joined by +; default: what the model declares, else found)")
    c = p.add_argument_group("common corruptions (--attack corruptions)")
    c.add_argument("--corruptions",
                   help="comma-separated corruption names, all15 (the standard 15, default) or all19 (+ the 4 extra)")
    c.add_argument("--severity", help="severities: 1-5 (default), 3, or 1,3,5")
    c.add_argument("--corruption-preset", choices=("imagenet-c", "cifar10-c"),
                   help="parameter table (default: by image size, cifar10-c up to 64 px)")
    c.add_argument("--clean-dataset", help="with --dataset cifar10-c|cifar100-c|imagenet-c: the clean test set "
                                           "the files were made from (default: cifar10 / cifar100 / imagenet)")
    c.add_argument("--clean-data-dir", help="root of the clean test set (default: --data-dir)")
    c.add_argument("--baseline", help="mCE reference: alexnet (ImageNet-C's, the default on imagenet-sized "
                                      "images) or a stored run id evaluated on the same corruptions")
    add_model_options(p)
    e = p.add_argument_group("engine and output")
    e.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    e.add_argument("--batch-size", type=batch_size, default=256,
                   help="examples per batch, or auto: the largest that fits the GPU (default: 256)")
    e.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="fp32, or autocast to bf16/fp16 (logits and losses stay fp32)")
    e.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False,
                   help="channels_last memory format (faster convolutions on GPUs)")
    e.add_argument("--fold-bn", action="store_true",
                   help="fold batch norm into the convolutions for evaluation (faster; logits equal up to float "
                        "rounding, which can flip about 1 outcome in 1,000 either way; docs/BENCHMARKS.md)")
    e.add_argument("--compile", action="store_true",
                   help="torch.compile the model (eager where compiling fails; pays on long runs only)")
    e.add_argument("--seed", type=int, default=0, help="seed of the example sample and random starts")
    e.add_argument("--tag", help="a free label stored with the run, e.g. a release name")
    e.add_argument("--db", default="results.db", help="SQLite results store (default: ./results.db)")
    e.add_argument("--json", help="also export the run, with per-example outcomes, to this JSON file")
    e.add_argument("--quiet", action="store_true", help="print only the table")
    e.add_argument("--config", metavar="SUITE.yaml",
                   help="evaluate a suite: models x data sets x attack settings, one stored run each; runs "
                        "complete in the store are skipped (other flags give the defaults)")
    from .publish import add_protocol_option  # --protocol (issue 6): fills dataset/examples/norm/eps/attacks
    add_protocol_option(g)
    p.set_defaults(func=run)


def batch_size(text: str) -> int | str:
    return "auto" if text.strip().lower() == "auto" else positive_int(text)


def specs_from_args(args: argparse.Namespace) -> list["RunSpec"]:
    """The RunSpecs these arguments ask for: one, or one per norm for `--norm linf,l2` (each its own
    stored run, with its own eps: `--eps linf=1/255,8/255 --eps l2=0.25,0.5`, or each data set's defaults)."""
    import dataclasses
    from ..specs import AttackSpec, RunSpec
    from ..models import ModelOptions
    from .options import parse_number
    norms = parse_norms(args.norm)
    opts = ModelOptions(weights=args.weights, mean=parse_channels(args.mean, "mean"),
                        std=parse_channels(args.std, "std"), num_classes=args.num_classes,
                        allow_unsafe=args.unsafe_load, threat=_zoo_threat(norms[0]))
    shared = dict(models=parse_list(args.model), data_dir=args.data_dir, dataset_name=args.dataset_name,
                  batch_size=args.batch_size,
                  device=args.device, precision=args.precision, channels_last=args.channels_last,
                  fold_bn=args.fold_bn, compile=args.compile,
                  model_options=opts, tag=args.tag)
    if getattr(args, "protocol", None):   # the protocol fixes data, examples, norm, eps and attacks
        from .publish import check_protocol_flags
        check_protocol_flags(args)
        return [RunSpec.from_protocol(args.protocol, seed=args.seed, **shared)]
    common = {"steps": args.steps, "restarts": args.restarts, "random_start": args.random_start, "loss": args.loss,
              "step_size": parse_number(args.step_size, "step size") if args.step_size else None}
    common.update(parse_kv(args.attack_args))
    names = parse_list(",".join(args.attack) if args.attack else "fgsm,pgd")
    if getattr(args, "bpda", None) is not None:   # for the bpda: attacks listed; --adaptive takes it too
        if any(n.startswith("bpda:") for n in names):
            common["bpda"] = args.bpda
        elif not args.adaptive:
            raise UserError("--bpda names what bpda: attacks approximate: add --attack bpda:pgd or --adaptive")
    params = tuple(sorted((k, v) for k, v in common.items() if v is not None))
    corruptions: tuple[str, ...] = ()
    if "corruptions" in names:
        names = tuple(n for n in names if n != "corruptions")
        corruptions = parse_corruptions(args.corruptions or "all15")
    else:   # an option that would be accepted and ignored is an error
        for flag in ("corruptions", "severity", "corruption_preset", "baseline", "clean_dataset", "clean_data_dir"):
            if getattr(args, flag, None) is not None:
                raise UserError(f"--{flag.replace('_', '-')} applies only to common corruptions: add "
                                f"--attack corruptions (or drop it)")
    eps = parse_eps_by_norm(args.eps, norms)
    base = RunSpec(dataset=args.dataset, split=args.split, attacks=tuple(AttackSpec(name, params) for name in names),
                   norm=norms[0], eps=eps[norms[0]], n_examples=args.n_examples, subset=args.subset, seed=args.seed,
                   corruptions=corruptions, severities=parse_severities(args.severity or "1-5"),
                   corruption_preset=args.corruption_preset, clean_dataset=args.clean_dataset,
                   min_norm=getattr(args, "min_norm", None),
                   clean_data_dir=args.clean_data_dir, **shared)
    return [dataclasses.replace(base, norm=n, eps=eps[n]) for n in norms]


def adaptive_options(args: argparse.Namespace):
    """`--adaptive` (with `--bpda`) as robustness.adaptive.Adaptive, or None."""
    if not getattr(args, "adaptive", False):
        return None
    from ..adaptive import Adaptive
    return Adaptive(bpda=args.bpda or "auto")


def spec_from_args(args: argparse.Namespace) -> "RunSpec":
    """The one RunSpec of these arguments (refused when they ask for several norms)."""
    specs = specs_from_args(args)
    if len(specs) != 1:
        raise UserError("these arguments make one run per norm; use specs_from_args")
    return specs[0]


def _zoo_threat(norm: str) -> str:
    """RobustBench's name of a threat model (which zoo board a `robustbench:` model comes from)."""
    return {"linf": "Linf", "l2": "L2"}.get(norm, norm)


def parse_norms(text: str) -> tuple[str, ...]:
    from attacks import NORMS, canonical_norm
    try:
        norms = tuple(dict.fromkeys(canonical_norm(n) for n in parse_list(text)))
    except ValueError as e:
        raise UserError(f"bad --norm {text!r}: {e}") from None
    bad = [n for n in norms if n not in NORMS]
    if bad:
        raise UserError(f"bad --norm {text!r}: expected one or more of {', '.join(NORMS)}")
    return norms


def parse_eps_by_norm(values: list[str] | str | None, norms: tuple[str, ...]) -> dict[str, tuple[float, ...] | None]:
    """`--eps 1/255,8/255` (one norm), or `--eps linf=1/255,8/255 --eps l2=0.5` (a list per norm); a norm
    without a list takes its data set's defaults."""
    from attacks import canonical_norm
    if values is None:
        return {n: None for n in norms}
    items = [values] if isinstance(values, str) else list(values)
    out: dict[str, tuple[float, ...] | None] = {n: None for n in norms}
    plain = [v for v in items if "=" not in v]
    if plain:
        if len(norms) > 1 or len(items) > 1:
            raise UserError("with several norms (or several --eps), give each list with its norm: "
                            "--eps linf=1/255,8/255 --eps l2=0.25,0.5")
        out[norms[0]] = parse_eps_list(plain[0])
        return out
    for v in items:
        key, _, text = v.partition("=")
        try:
            norm = canonical_norm(key)
        except ValueError:
            raise UserError(f"bad --eps {v!r}: {key!r} is not a norm") from None
        if norm not in out:
            raise UserError(f"--eps {v!r} names {norm}, which is not in --norm {','.join(norms)}")
        if out[norm] is not None:
            raise UserError(f"--eps gives {norm} twice")
        out[norm] = parse_eps_list(text)
    return out


def parse_corruptions(text: str) -> tuple[str, ...]:
    from attacks.corruptions import CORRUPTIONS, STANDARD
    key = text.strip().lower()
    if key in ("all", "all15"):
        return tuple(STANDARD)
    if key == "all19":
        return tuple(CORRUPTIONS)
    return parse_list(text)


def parse_severities(text: str) -> tuple[int, ...]:
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                out.extend(range(lo, hi + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise UserError(f"bad --severity {text!r}: expected e.g. 1-5, 3 or 1,3,5") from None
    if not out or any(s < 1 or s > 5 for s in out):
        raise UserError(f"bad --severity {text!r}: severities are 1..5")
    return tuple(sorted(set(out)))


def run(args: argparse.Namespace) -> int:
    from leaderboards import ResultStore, StoreError
    from ..distributed import init_world, shutdown
    from leaderboards.threats import CORRUPTION
    from ..report import corruption_summaries, format_report
    from ..runner import Evaluator, export_json
    world = init_world()
    try:
        if args.config:
            from ..suite import load_suite
            base = specs_from_args(args)
            if len(base) > 1:
                raise UserError("--config runs a suite: give the norms in the suite file, not --norm a,b")
            specs = load_suite(args.config, base=base[0])
        else:
            specs = specs_from_args(args)
        if args.json:
            if len(specs) > 1:
                raise UserError("--json exports one run; a suite or several norms store several (export them "
                                "with robust-bench leaderboard --format json)")
            _check_writable(args.json)
        quiet = args.quiet or not world.main
        log = (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr))
        store = None
        done: list = []
        try:
            for i, spec in enumerate(specs):
                if len(specs) > 1 and not quiet:
                    print(f"[{i + 1}/{len(specs)}] {', '.join(spec.models)} / "
                          f"{', '.join(a.name for a in spec.attacks)}", file=sys.stderr)
                evaluator = Evaluator(spec, log=log, progress=not quiet and sys.stderr.isatty(), world=world,
                                      argv=getattr(args, "argv", None), adaptive=adaptive_options(args))
                prepared = evaluator.prepare()  # every input check happens before the store is opened
                if world.main and store is None:
                    try:
                        store = ResultStore(args.db)
                    except StoreError as e:
                        raise UserError(str(e)) from None
                outcome = evaluator.run(store, prepared)
                done.append((spec, outcome))
                if world.main:
                    summaries = corruption_summaries([r for r in outcome.results if r.kind == CORRUPTION],
                                                     args.baseline, store)
                    print(format_report(outcome.results, outcome.warnings, summaries))
                    if not args.quiet:
                        print(f"\nrun {outcome.run_id} stored in {args.db}")
                    if args.json:
                        export_json(outcome, store, args.json,
                                    extra={"corruption_summary": {m: v.to_json() for m, v in summaries.items()}}
                                    if summaries else None)
            if world.main and len({s.norm for s, _ in done}) > 1 and not args.config:
                text = _union_text(done, store)
                if text:
                    print(text)
        finally:
            if store is not None:
                store.close()
    finally:
        shutdown(world)
    return 0


def _union_text(done: list, store) -> str:
    """The union-of-norms rows of a multi-norm run, from the stored per-example outcomes."""
    from ..report import format_union, union_over_norms
    from ..specs import WORST_CASE
    rows: dict[str, list] = {}
    from leaderboards.threats import CORRUPTION
    models = dict.fromkeys(r.model for _, o in done for r in o.results if r.kind != CORRUPTION)
    for model in models:
        series = {}
        for spec, o in done:
            mine = [r for r in o.results if r.model == model and r.norm == spec.norm]
            attacks = {r.attack for r in mine}
            overall = WORST_CASE if WORST_CASE in attacks else (next(iter(attacks)) if len(attacks) == 1 else None)
            if overall is None:
                continue
            series[spec.norm] = [(r.eps, *store.threat_outcomes(o.run_id, model, overall, r.eps)[::2])
                                 for r in sorted((r for r in mine if r.attack == overall), key=lambda r: r.eps)]
        rows[model] = union_over_norms(series) if len(series) > 1 else []
    return format_union(rows)


def _check_writable(path: str) -> None:
    from pathlib import Path
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: folder {parent} does not exist")


