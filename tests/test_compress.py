"""`robust-bench compress` and robustness.compression (issue 15) on the shared ResNet-20 and real CIFAR-10:
pruning masks are permanent and the sparsity is the asked one (against a global L1 threshold computed here with
numpy), channel pruning reloads, the int8 model rebuilds bit for bit from its checkpoint and its twin computes
torchao's converted graph exactly, a quantized model's worst case is never above the transfer attack alone and the
masking check fires on the raw graph, distillation losses equal the papers' formulas written here, a student's
checkpoint evaluates with no other flag, and bad options are one line with exit code 2."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import CIFAR_MEAN, CIFAR_STD, CIFAR_TEST, CIFAR_TRAIN, RESNET20, ROOT, need

ARCH = f"{ROOT / 'robustness' / 'archs.py'}:resnet20"
MEAN = tuple(float(v) for v in CIFAR_MEAN.split(","))
STD = tuple(float(v) for v in CIFAR_STD.split(","))


def _spec(**kw):
    from robustness.compression import CompressSpec
    need(RESNET20)
    need(CIFAR_TRAIN)
    return CompressSpec(model=ARCH, weights=str(RESNET20), mean=MEAN, std=STD, dataset=str(CIFAR_TRAIN),
                        latency_repeats=2, latency_compile=False, **kw)


def _base_weights() -> dict[str, torch.Tensor]:
    sd = torch.load(RESNET20, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("module."):]: v for k, v in sd.items()}


def _prunable_keys(state) -> list[str]:
    return [k for k, v in state.items() if k.endswith("weight") and v.dim() in (2, 4)]


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_unstructured_pruning_is_permanent_global_l1_at_the_asked_sparsity(sparsity, tmp_path):
    import robustness as rb
    from robustness.models import create_model
    out = rb.compress(_spec(method="prune", sparsity=sparsity, out=str(tmp_path / "p.pt")))
    blob = torch.load(out.checkpoint, weights_only=True)
    state = blob["state_dict"]
    assert not any(k.endswith(("_orig", "_mask")) for k in state), "masks must be folded into the weights"
    keys = _prunable_keys(state)
    # independent: the global L1 threshold over the base weights, by numpy
    base = _base_weights()
    allw = np.concatenate([base[k].numpy().ravel() for k in keys])
    n_prune = int(round(sparsity * allw.size))
    kth = np.sort(np.abs(allw))[n_prune - 1]
    zeros = sum(int((state[k] == 0).sum()) for k in keys)
    assert zeros == n_prune
    for k in keys:
        keep = np.abs(base[k].numpy()) > kth
        assert np.array_equal(state[k].numpy() != 0, keep), k
        assert torch.equal(state[k][torch.from_numpy(keep)], base[k][torch.from_numpy(keep)])
    assert out.stats.sparsity == pytest.approx(n_prune / allw.size, abs=1e-6)
    step = blob["meta"]["compression"][-1]
    assert step["method"] == "prune" and step["sparsity_asked"] == sparsity and step["stats"]["size_bytes"] > 0
    assert step["stats"]["latency_ms"] > 0 and blob["meta"]["base_model"] == ARCH and blob["meta"]["source"] == "registry"
    loaded = create_model(str(out.checkpoint))
    assert loaded.info.extra["compression"][-1]["sparsity"] == out.stats.sparsity
    assert not any(m._forward_pre_hooks for m in loaded.module.modules())


def test_masks_hold_through_adversarial_fine_tuning(tmp_path):
    import robustness as rb
    out = rb.compress(_spec(method="prune", sparsity=0.9, epochs=1, defense="pgd", eps=2 / 255, steps=2, n_train=64,
                            val_size=16, batch_size=32, out=str(tmp_path / "ft.pt")))
    state = torch.load(out.checkpoint, weights_only=True)["state_dict"]
    keys = _prunable_keys(state)
    base = _base_weights()
    allw = np.concatenate([base[k].numpy().ravel() for k in keys])
    kth = np.sort(np.abs(allw))[int(round(0.9 * allw.size)) - 1]
    changed = 0
    for k in keys:
        pruned = torch.from_numpy(np.abs(base[k].numpy()) <= kth)
        assert bool((state[k][pruned] == 0).all()), f"{k}: a pruned weight came back during fine-tuning"
        changed += int((state[k][~pruned] != base[k][~pruned]).sum())
    assert changed > 0, "the fine-tuning changed nothing"
    assert out.step["finetune"]["defense"] == "pgd"


def test_channel_pruning_removes_channels_and_reloads(tmp_path):
    import robustness as rb
    from robustness.models import create_model
    out = rb.compress(_spec(method="prune", sparsity=0.5, structure="channel", out=str(tmp_path / "c.pt")))
    assert out.stats.parameters < 0.6 * out.base.parameters
    state = torch.load(out.checkpoint, weights_only=True)["state_dict"]
    assert state["layer1.0.conv1.weight"].shape[0] == 8          # 16 channels, half removed
    loaded = create_model(str(out.checkpoint))
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), out.model(x))


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    import robustness as rb
    path = tmp_path_factory.mktemp("q") / "int8.pt"
    out = rb.compress(_spec(method="quantize", calibration=64, out=str(path)))
    return out, path


def test_int8_checkpoint_rebuilds_torchaos_graph_bit_for_bit(quantized):
    from robustness.compression import QuantizedModel
    from robustness.models import create_model
    out, path = quantized
    loaded = create_model(str(path))
    assert isinstance(loaded.module, QuantizedModel) and loaded.module.pairs > 10
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        ref = out.model.reference(x)            # torchao's convert_pt2e output, as calibrated
        assert torch.equal(loaded.module.reference(x), ref)
        assert torch.equal(loaded.module(x), ref)   # the straight-through twin computes the same forward pass
        assert not torch.equal(ref, loaded.module.float_model(x))
    ops = {str(n.target) for n in loaded.module.reference.graph.nodes if n.op == "call_function"}
    assert any("quantize_per_tensor" in o for o in ops) and any("dequantize_per_channel" in o for o in ops)
    st = out.stats
    assert st.bits == 8 and st.size_bytes < 0.35 * out.base.size_bytes   # int8 weights: about a quarter
    assert loaded.info.weights_sha256 != create_model(ARCH).info.weights_sha256
    assert "observers" not in loaded.info.extra["compression"][-1]    # tensors stay out of run metadata


def test_straight_through_gradient_is_torchs_fake_quantize_gradient(quantized):
    """The twin's input gradient equals the one torch's own fake_quantize_per_tensor_affine (straight-through
    inside the clamp range) gives on the first quantizer, the input's."""
    out, _ = quantized
    q = out.model
    first = next(n for n in q.reference.graph.nodes if n.op == "call_function" and "quantize_per_tensor" in str(n.target))
    scale, zp, lo, hi = first.args[1:5]
    x = torch.rand(2, 3, 32, 32)
    norm = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    v = norm.clone().requires_grad_(True)
    fq = torch.fake_quantize_per_tensor_affine(v, float(scale), int(zp), int(lo), int(hi))
    (fq * torch.arange(fq.numel()).view_as(fq).float().sin()).sum().backward()
    from robustness.compression import _ste_qdq
    w = norm.clone().requires_grad_(True)
    ours = _ste_qdq(w, scale, zp, lo, hi, first.args[5], scale, zp, lo, hi, first.args[5])
    (ours * torch.arange(ours.numel()).view_as(ours).float().sin()).sum().backward()
    assert torch.allclose(ours, fq, atol=1e-6)
    assert torch.equal(w.grad, v.grad)


def test_quantized_worst_case_is_never_above_the_transfer_alone_and_masking_is_caught(quantized):
    from attacks.sanity import model_checks

    import robustness as rb
    need(CIFAR_TEST)
    out, path = quantized
    ev = rb.evaluate_compressed(str(path), str(CIFAR_TEST), attacks=["pgd"], eps=[2 / 255], n_examples=48,
                                subset="first", device="cpu", batch_size=48)
    rows = {r.attack: r for r in ev.results}
    transfer = next(a for a in rows if a.startswith("transfer:"))
    worst = next(a for a in rows if a not in ("pgd", transfer) and "worst" in a.lower())
    assert rows[worst].accuracy <= rows[transfer].accuracy and rows[worst].accuracy <= rows["pgd"].accuracy
    per = {o.attack: o for o in ev.per_example}
    for i, eps in enumerate(per[worst].broken_eps):
        if per[transfer].broken_eps[i] is not None:
            assert eps is not None, f"example {i}: broken by the transfer but not in the worst case"
    assert rows["pgd"].accuracy < rows["pgd"].clean_accuracy      # the twin's gradients are useful

    class Raw(torch.nn.Module):    # what a gradient attack sees of the int8 graph itself: a zero derivative
        def __init__(self, g):
            super().__init__()
            self.g = g

        def forward(self, x):
            return self.g(x.detach()) + 0 * x.sum()
    from robustness.data import image_folder
    ds = image_folder(CIFAR_TEST, None).dataset
    x = torch.stack([ds[i][0] for i in range(32)])
    y = torch.tensor([ds[i][1] for i in range(32)])
    codes = {f.code for f in model_checks(Raw(out.model.reference), x, y, attacks=["pgd"])}
    assert "gradient_masking" in codes
    assert "gradient_masking" not in {f.code for f in model_checks(out.model, x, y, attacks=["pgd"])}


def test_distillation_losses_are_the_papers_formulas():
    from defenses.distill import RSLAD, Distill
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    rec = Distill(teacher=torch.nn.Identity(), temperature=3.0, alpha=0.7)
    rec._batch["teacher"] = t
    got, _ = rec.loss((s,), y)
    pt, ps = torch.softmax(t / 3, 1), torch.softmax(s / 3, 1)
    kl = (pt * (pt.log() - ps.log())).sum(1).mean()
    ce = -torch.log_softmax(s, 1)[torch.arange(6), y].mean()
    assert got.item() == pytest.approx(0.7 * 9 * kl.item() + 0.3 * ce.item(), rel=1e-5)
    adv = torch.randn(6, 10)
    r = RSLAD(eps=8 / 255, teacher=torch.nn.Identity())
    p = torch.softmax(t, 1)
    r._batch["teacher"] = p
    got, _ = r.loss((s, adv), y)
    kl_adv = (p * (p.log() - torch.log_softmax(adv, 1))).sum(1).mean()
    kl_nat = (p * (p.log() - torch.log_softmax(s, 1))).sum(1).mean()
    assert got.item() == pytest.approx(5 / 6 * kl_adv.item() + 1 / 6 * kl_nat.item(), rel=1e-5)
    assert r.step_size == pytest.approx(2 / 255)


def test_distilled_student_evaluates_with_no_other_flag(cli, tmp_path):
    import robustness as rb
    need(CIFAR_TEST)
    out = rb.compress(_spec(method="distill", arch="small-cnn", arch_args={"hidden": 16}, epochs=1, n_train=128,
                            val_size=16, batch_size=64, out=str(tmp_path / "s.pt")))
    meta = torch.load(out.checkpoint, weights_only=True)["meta"]
    assert meta["compression"][-1]["teacher"] == ARCH and meta["dataset"].endswith("test")
    assert out.stats.parameters < out.base.parameters
    r = cli("run", "--model", out.checkpoint, "--n-examples", "16", "--subset", "first", "--attack", "fgsm",
            "--eps", "1/255", "--device", "cpu", "--db", tmp_path / "r.db", "--json", tmp_path / "r.json")
    assert r.code == 0, r
    import json
    doc = json.loads((tmp_path / "r.json").read_text())
    from robustness.data import image_folder
    ds = image_folder(CIFAR_TEST, None).dataset
    x = torch.stack([ds[i][0] for i in range(16)])
    y = torch.tensor([ds[i][1] for i in range(16)])
    with torch.no_grad():
        want = float((out.model(x).argmax(1) == y).float().mean())
    clean = {round(float(row["clean_accuracy"]), 6) for row in doc["results"]}
    assert clean == {round(want, 6)}


BAD = [
    (["--method", "prune", "--sparsity", "0"], "strictly between 0 and 1"),
    (["--method", "prune", "--sparsity", "1"], "strictly between 0 and 1"),
    (["--method", "prune", "--sparsity", "0.5,1.5"], "strictly between 0 and 1"),
    (["--method", "prune", "--sparsity", "-0.1"], "strictly between 0 and 1"),
    (["--method", "prune", "--sparsity", "half"], "--sparsity"),
    (["--method", "prune"], "needs --sparsity"),
    (["--method", "quantize", "--device", "cuda"], "runs on the CPU"),
    (["--method", "quantize", "--sparsity", "0.5"], "applies to --method prune"),
    (["--method", "distill"], "needs --arch"),
    (["--method", "prune", "--sparsity", "0.5", "--defense", "pgd"], "--epochs"),
    (["--method", "distill", "--arch", "nonesuch"], "unknown architecture"),
]


@pytest.mark.parametrize("args,want", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_options_are_one_line_and_exit_2(cli, tmp_path, args, want):
    need(RESNET20)
    r = cli("compress", "--model", ARCH, "--weights", RESNET20, "--mean", CIFAR_MEAN, "--std", CIFAR_STD,
            "--dataset", CIFAR_TRAIN, "--out", tmp_path / "x.pt", *args)
    assert r.code == 2, r
    assert r.err.count("\n") == 1 and want in r.err, r.err
    assert not (tmp_path / "x.pt").exists()


def test_cli_prunes_at_several_sparsities(cli, tmp_path):
    need(RESNET20)
    r = cli("compress", "--model", ARCH, "--weights", RESNET20, "--mean", CIFAR_MEAN, "--std", CIFAR_STD,
            "--dataset", CIFAR_TRAIN, "--method", "prune", "--sparsity", "0.5,0.9", "--out", tmp_path / "r20.pt",
            "--latency-repeats", "2")
    assert r.code == 0, r
    for tag, s in (("50", 0.5), ("90", 0.9)):
        meta = torch.load(tmp_path / f"r20-s{tag}.pt", weights_only=True)["meta"]
        assert math.isclose(meta["compression"][-1]["sparsity"], s, abs_tol=1e-5)
    assert "weight sparsity 90.00%" in r.out


def test_compression_report_table_plot_and_site(cli, quantized, tmp_path):
    """The report's cells are the stored runs' numbers and the checkpoints' measured costs; the Pareto front is
    the brute-force one; leaderboard --compression, plot --kind compression and the site show it."""
    import csv
    import io
    import json

    import robustness as rb
    from leaderboards import ResultStore
    from leaderboards.compression import build_report, render_report
    need(CIFAR_TEST)
    pruned = rb.compress(_spec(method="prune", sparsity=0.9, out=str(tmp_path / "p90.pt")))
    _, qpath = quantized
    db = tmp_path / "r.db"
    common = dict(attacks=["fgsm", "pgd"], eps=[1 / 255, 2 / 255], n_examples=24, subset="first", device="cpu",
                  batch_size=24, store=str(db), corruptions=["gaussian_noise"], severities=[1])
    evs = {"archs:resnet20": rb.evaluate(ARCH, str(CIFAR_TEST), weights=str(RESNET20), mean=MEAN, std=STD, **common),
           "p90.pt": rb.evaluate(str(pruned.checkpoint), str(CIFAR_TEST), **common),
           "int8.pt": rb.evaluate(str(qpath), str(CIFAR_TEST), **common)}
    with ResultStore(db) as store:
        report = build_report(store)
    assert report.base == "archs:resnet20" and [r.model for r in report.rows] == ["archs:resnet20", "int8.pt", "p90.pt"]
    for row in report.rows:
        ev = evs[row.model]
        for eps, label in ((1 / 255, "1/255"), (2 / 255, "2/255")):
            assert row.attacks[f"fgsm@{label}"] == ev.result(row.model, "fgsm", eps).accuracy
            assert row.worst[label] == ev.result(row.model, "worst-case", eps).accuracy
        corr = [r.accuracy for r in ev.results if r.attack.startswith("corruption:")]
        assert row.corruption_mean == pytest.approx(sum(corr) / len(corr))
        assert row.clean == ev.results[0].clean_accuracy
    p90 = report.rows[2]
    assert p90.size_bytes == pruned.stats.size_bytes and p90.latency_ms == pruned.stats.latency_ms
    assert p90.sparsity == pytest.approx(0.9, abs=1e-5) and report.rows[1].bits == 8
    assert report.rows[0].size_bytes == pruned.base.size_bytes          # the base as measured by compress
    pts = [(r.model, r.gzip_bytes, r.worst["2/255"]) for r in report.rows]
    brute = [m for m, s, a in pts if not any(s2 <= s and a2 >= a and (s2, a2) != (s, a) for _, s2, a2 in pts)]
    assert sorted(report.pareto()) == sorted(brute)
    rows = list(csv.reader(io.StringIO(render_report(report, "csv"))))
    assert rows[0][:3] == ["Model", "Compression", "Size (KiB)"] and len(rows) == 4
    assert json.loads(render_report(report, "json"))["base"] == "archs:resnet20"
    r = cli("leaderboard", "--db", db, "--compression")
    assert r.code == 0 and "| archs:resnet20" in r.out and "Worst case @2/255" in r.out, r
    r = cli("leaderboard", "--db", db, "--compression", "--format", "latex")
    assert r.code == 2 and r.err.count("\n") == 1
    r = cli("plot", "--db", db, "--kind", "compression", "--out", tmp_path / "c.png")
    assert r.code == 0 and (tmp_path / "c.png").stat().st_size > 1000, r
    r = cli("site", "--db", db, "--out", tmp_path / "site")
    assert r.code == 0, r
    page = (tmp_path / "site" / "index.html").read_text()
    assert "<h2>Compression</h2>" in page and (tmp_path / "site" / "plots" / "compression.png").is_file()


@pytest.mark.parametrize("speedup", [(), ("--fold-bn",), ("--precision", "bf16"), ("--compile",)])
def test_plain_run_of_an_int8_checkpoint_adds_the_float_transfer(cli, quantized, tmp_path, speedup):
    """`robust-bench run --model int8.pt` alone reports the honest worst case: the gradient attack on the
    straight-through twin and its transfer from the float model, as evaluate_compressed does; also when the
    evaluation wraps or rewrites the module (--fold-bn, autocast)."""
    need(CIFAR_TEST)
    _, path = quantized
    out = tmp_path / "q.json"
    res = cli("run", "--model", str(path), "--dataset", str(CIFAR_TEST), "--attack", "pgd", "--eps", "2/255",
              "--n-examples", "24", "--subset", "first", "--device", "cpu", "--db", tmp_path / "r.db", "--json", out,
              *speedup)
    assert res.code == 0, res
    import json
    rows = {r["attack"]: r for r in json.loads(out.read_text())["results"]}
    transfer = [a for a in rows if a.startswith("transfer:float:")]
    assert transfer and "worst-case" in rows
    assert rows["worst-case"]["accuracy"] <= min(rows["pgd"]["accuracy"], rows[transfer[0]]["accuracy"])
