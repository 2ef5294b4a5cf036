"""`robust-bench certify`: certified L2 robustness by randomized smoothing, stored per example."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..errors import UserError
from .options import add_model_options, parse_channels, parse_list, parse_number, positive_int

if TYPE_CHECKING:
    from ..certify import CertifyOutcome, CertifySpec

EXAMPLES = """examples:
  robust-bench certify --model digits-cnn --sigma 0.25 --n 1000 --n-examples 50
  robust-bench certify --model gauss.pt --dataset ../shared/data/cifar10/test --sigma 0.25 \\
      --n0 100 --n 100000 --alpha 0.001 --batch-size 1000 --n-examples 500 --subset first
  robust-bench certify --model gauss.pt --sigma 0.25 --n 10000 --attack-radii 0.25,0.5   # + the attack check
  torchrun --nproc-per-node 4 -m robustness certify --model gauss.pt --sigma 0.25 --N 100000   # sharded
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("certify", help="certified L2 robustness by randomized smoothing (Cohen et al. 2019)",
                       description="Certify the smoothed classifier g(x) = argmax_c P(f(x + N(0, sigma^2)) = c) of "
                       "each model: per example CERTIFY's class or abstain and its certified L2 radius "
                       "sigma * Phi^-1(pA_lower), pA_lower a one-sided Clopper-Pearson bound at level alpha; "
                       "certified accuracy at each radius with 95% Wilson intervals. Stored per example; "
                       "rerunning an interrupted command resumes it; torchrun shards it.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to certify")
    g.add_argument("--model", required=True, help="comma-separated models, as for `robust-bench run` (a base "
                                                  "classifier trained with noise: `train --defense gaussian`)")
    g.add_argument("--dataset", help="a named data set, an image folder or a .npz/.npy file (default: the model's)")
    g.add_argument("--data-dir", help="root folder of a named data set")
    g.add_argument("--split", default="test", choices=("test", "train"), help="data split (default: test)")
    g.add_argument("--n-examples", type=positive_int, help="certify a deterministic subset of N examples")
    g.add_argument("--subset", default="random", choices=("random", "first"),
                   help="random: a seeded sample (default); first: the first N")
    s = p.add_argument_group("smoothing (Cohen et al. 2019)")
    s.add_argument("--sigma", default="0.25", help="noise level, pixels in [0, 1] (default: 0.25)")
    s.add_argument("--n0", "--N0", type=positive_int, default=100, help="samples that select the class (default: 100)")
    s.add_argument("--n", "--N", type=positive_int, default=100_000, dest="n",
                   help="samples that estimate its probability (default: 100000); under torchrun write --N "
                        "(torchrun's parser reads --n as short for its own --nnodes)")
    s.add_argument("--alpha", default="0.001", help="failure probability of each certificate (default: 0.001)")
    s.add_argument("--radii", default="0,0.25,0.5,0.75,1",
                   help="L2 radii at which certified accuracy is reported (default: %(default)s)")
    s.add_argument("--predict", action="store_true",
                   help="also run PREDICT (n fresh samples, binomial test at alpha) on each clean input")
    c = p.add_argument_group("the attack check (Salman et al. 2019: L2 PGD on the smoothed classifier)")
    c.add_argument("--attack-radii", help="attack g within these L2 radii and PREDICT on the result; an example "
                                          "certified there that the attack turns into a wrong class is a warning")
    c.add_argument("--attack-steps", type=positive_int, default=20, help="PGD steps (default: 20)")
    c.add_argument("--attack-samples", type=positive_int, default=16,
                   help="noise draws per step for the expected loss (default: 16)")
    add_model_options(p)
    e = p.add_argument_group("engine and output")
    e.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    e.add_argument("--batch-size", type=_batch_size, default=1000,
                   help="noisy copies per forward pass, or auto: the most that fit the GPU (default: 1000)")
    e.add_argument("--examples-per-batch", type=positive_int, default=10,
                   help="examples committed to the store together (resume and sharding unit; default: 10)")
    e.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="fp32, or autocast to bf16/fp16")
    e.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False,
                   help="channels_last weights (faster convolutions on GPUs)")
    e.add_argument("--seed", type=int, default=0, help="seed of the example sample and of the noise")
    e.add_argument("--tag", help="a free label stored with the run")
    e.add_argument("--db", default="results.db", help="SQLite results store (default: ./results.db)")
    e.add_argument("--json", help="also export the run with every example's certificate to this JSON file")
    e.add_argument("--quiet", action="store_true", help="print only the table")
    p.set_defaults(func=run)


def _batch_size(text: str) -> int | str:
    return "auto" if text.strip().lower() == "auto" else positive_int(text)


def _radii(text: str | None, flag: str) -> tuple[float, ...]:
    if text is None:
        return ()
    values = tuple(parse_number(t, flag) for t in text.split(",") if t.strip())
    if not values:
        raise UserError(f"{flag} needs at least one radius")
    return values


def spec_from_args(args: argparse.Namespace) -> "CertifySpec":
    from ..certify import CertifySpec
    from ..models import ModelOptions
    opts = ModelOptions(weights=args.weights, mean=parse_channels(args.mean, "mean"),
                        std=parse_channels(args.std, "std"), num_classes=args.num_classes,
                        allow_unsafe=args.unsafe_load, threat="L2")
    return CertifySpec(models=parse_list(args.model), dataset=args.dataset, data_dir=args.data_dir, split=args.split,
                       n_examples=args.n_examples, subset=args.subset, seed=args.seed,
                       sigma=parse_number(args.sigma, "--sigma"), n0=args.n0, n=args.n,
                       alpha=parse_number(args.alpha, "--alpha"), radii=_radii(args.radii, "--radii"),
                       predict=args.predict, attack_radii=_radii(args.attack_radii, "--attack-radii"),
                       attack_steps=args.attack_steps, attack_samples=args.attack_samples,
                       batch_size=args.batch_size, examples_per_batch=args.examples_per_batch, device=args.device,
                       precision=args.precision, channels_last=args.channels_last, model_options=opts,
                       tag=args.tag).check()


def run(args: argparse.Namespace) -> int:
    from leaderboards import ResultStore, StoreError
    from ..certify import Certifier, export_json
    from ..distributed import init_world, shutdown
    world = init_world()
    try:
        spec = spec_from_args(args)
        if args.json:
            from pathlib import Path
            parent = Path(args.json).resolve().parent
            if not parent.is_dir():
                raise UserError(f"cannot write {args.json}: folder {parent} does not exist")
        quiet = args.quiet or not world.main
        log = (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr))
        certifier = Certifier(spec, log=log, progress=not quiet and sys.stderr.isatty(), world=world,
                              argv=getattr(args, "argv", None))
        prepared = certifier.prepare()   # every input check before the store is opened
        store = None
        try:
            if world.main:
                try:
                    store = ResultStore(args.db)
                except StoreError as e:
                    raise UserError(str(e)) from None
            outcome = certifier.run(store, prepared)
            if world.main:
                print(format_outcome(outcome, spec))
                for w in outcome.warnings:
                    where = ", ".join(f"{k}={w[k]:g}" if k == "eps" else f"{k}={w[k]}"
                                      for k in ("model", "attack", "eps") if w.get(k) is not None)
                    print(f"WARNING [{w['code']}] {where}: {w['message']} (see docs/CHECKS.md)")
                if not args.quiet:
                    print(f"\nrun {outcome.run_id} stored in {args.db}")
                if args.json:
                    export_json(outcome, store, args.json)
        finally:
            if store is not None:
                store.close()
    finally:
        shutdown(world)
    return 0


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def format_outcome(outcome: "CertifyOutcome", spec: "CertifySpec") -> str:
    """Per smoothed model: certified accuracy % [95% Wilson] at each radius, then PREDICT and the attack
    rows, abstentions and speed."""
    from ..certify import CERTIFIED, EMPIRICAL, PREDICTED
    out = [f"certified accuracy % [95% Wilson interval], L2, randomized smoothing sigma={spec.sigma:g} "
           f"(n0={spec.n0}, n={spec.n}, alpha={spec.alpha:g})"]
    radii = sorted({r.eps for r in outcome.results if r.attack == CERTIFIED})
    header = ["model", "data", "n", "row"] + [f"r={r:g}" for r in radii]
    rows = []
    for model in dict.fromkeys(r.model for r in outcome.results):
        mine = [r for r in outcome.results if r.model == model]
        first = mine[0]
        cert = {r.eps: r for r in mine if r.attack == CERTIFIED}
        rows.append([model, first.dataset, str(first.n), "certified"] +
                    [f"{_pct(cert[r].accuracy)} [{_pct(cert[r].ci95[0])}-{_pct(cert[r].ci95[1])}]" if r in cert else ""
                     for r in radii])
        for attack, title in ((PREDICTED, "predict (clean)"), (EMPIRICAL, "after L2 PGD")):
            got = {r.eps: r for r in mine if r.attack == attack}
            if not got:
                continue
            cells = []
            for r in radii:
                hit = got.get(r) or (got.get(0.0) if attack == PREDICTED and r == radii[0] else None)
                cells.append("" if hit is None else f"{_pct(hit.accuracy)} [{_pct(hit.ci95[0])}-{_pct(hit.ci95[1])}]")
            extra = sorted(e for e in got if e not in radii and attack == EMPIRICAL)
            title += "" if not extra else f" (also at r={', '.join(f'{e:g}' for e in extra)}: " + \
                ", ".join(f"{_pct(got[e].accuracy)}" for e in extra) + ")"
            rows.append(["", "", "", title] + cells)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out += [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    for model, sp in outcome.summary.items():
        out.append(f"{model}: abstained on {sp['abstained']} of {sp['examples']}; certified in {sp['seconds']:.1f} s: "
                   f"{sp['images_per_second']:.3g} images/s, {sp['seconds_per_image']:.3g} s per image "
                   f"({sp['samples_per_second']:.4g} noisy samples/s)")
    return "\n".join(out)
