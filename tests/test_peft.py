"""Parameter-efficient fine-tuning (issue 15): LoRA through peft and BitFit, on conv nets and ViTs. Trainable
counts against the LoRA paper's formula worked here (r * (fan_in + fan_out) per adapted layer), merging against
the unmerged forward pass, adapters saved merged or separately and both loaded by `run` with no other flag,
every defense, and bad options one line with exit 2."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

pytest.importorskip("peft")

from tests.conftest import CIFAR_MEAN, CIFAR_STD, CIFAR_TRAIN, RESNET20, ROOT, need  # noqa: E402

ARCH = f"{ROOT / 'robustness' / 'archs.py'}:resnet20"


def _resnet20():
    from robustness.archs import resnet20
    return resnet20().eval()


def test_lora_trainable_count_is_the_papers_formula_on_resnet20():
    """LoRA on a k x k conv (in -> out) adds A: r x in x k x k and B: out x r (x 1 x 1); the head trains in full."""
    from defenses.peft import LoraSettings, apply_lora
    net = _resnet20()
    convs = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    r = 4
    want = sum(r * m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels * r for _, m in convs)
    want += net.linear.weight.numel() + net.linear.bias.numel()
    total = sum(p.numel() for p in net.parameters()) + want - net.linear.weight.numel() - net.linear.bias.numel()
    rep = apply_lora(net, LoraSettings(rank=r, alpha=8), head="linear")
    assert rep.trainable == want and rep.total == total
    assert rep.percent == pytest.approx(100 * want / total)
    assert sorted(rep.layers) == sorted(n for n, _ in convs)
    assert all(p.requires_grad == (".lora_" in n or n.startswith("linear.")) for n, p in net.named_parameters())


def test_lora_defaults_on_a_timm_vit_are_attention_and_mlp():
    timm = pytest.importorskip("timm")
    from defenses.peft import default_targets
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                            embed_dim=48, num_heads=2, num_classes=10)
    got = set(default_targets(vit, "head"))
    want = {f"blocks.{i}.{leaf}" for i in range(2) for leaf in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    assert got == want


def test_merged_lora_computes_the_unmerged_forward_and_keeps_the_architecture():
    from defenses.peft import LoraSettings, apply_lora, merge_lora
    torch.manual_seed(0)
    net = _resnet20()
    keys = set(net.state_dict())
    apply_lora(net, LoraSettings(rank=4, alpha=8), head="linear")
    for n, p in net.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.05)     # B starts at zero: make the update matter
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        merged = merge_lora(net)
        after = merged(x)
    assert set(merged.state_dict()) == keys
    assert torch.allclose(before, after, atol=1e-4)
    assert not torch.allclose(before, _resnet20()(x), atol=1e-3)


def test_bitfit_trains_biases_and_the_head_only():
    from defenses.peft import apply_bitfit
    from robustness.archs import DigitsCNN
    net = DigitsCNN()
    rep = apply_bitfit(net, "fc")
    want = net.conv1.bias.numel() + net.conv2.bias.numel() + net.fc.weight.numel() + net.fc.bias.numel()
    assert rep.trainable == want


@pytest.mark.parametrize("defense", ["standard", "fgsm", "pgd", "trades"])
def test_adversarial_lora_fine_tuning_with_every_defense_loads_with_no_other_flag(cli, tmp_path, defense):
    out = tmp_path / "lora.pt"
    extra = [] if defense == "standard" else ["--eps", "0.05"]
    r = cli("train", "--model", "digits-cnn", "--dataset", "digits", "--finetune", "lora", "--lora-rank", "2",
            "--defense", defense, *extra, "--epochs", "1", "--n-train", "128", "--val-size", "32", "--batch-size", "32",
            "--out", out, "--allow-failed")
    assert r.code == 0, r
    assert "trainable parameters of" in r.out + r.err and "peak memory" in r.out + r.err
    blob = torch.load(out, weights_only=True)
    assert blob["arch"] == "digits-cnn" and not any("lora" in k for k in blob["state_dict"])
    ad = blob["meta"]["adapter"]
    assert ad["method"] == "lora" and ad["merged"] and ad["layers"] == ["conv1", "conv2"] and ad["peak_rss_mib"] > 0
    r = cli("run", "--model", out, "--n-examples", "16", "--attack", "fgsm", "--eps", "0.05", "--db", tmp_path / "r.db")
    assert r.code == 0, r


def test_separate_adapter_equals_merged_and_both_load(cli, tmp_path):
    """The same training saved merged and as an adapter: `run` loads both, and they compute the same function."""
    from robustness.models import create_model
    common = ["--model", "digits-cnn", "--dataset", "digits", "--epochs", "1", "--n-train", "128", "--val-size", "32",
              "--batch-size", "32", "--defense", "pgd", "--eps", "0.05", "--allow-failed"]
    for method in ("lora", "bitfit"):
        merged, adapter = tmp_path / f"{method}-m.pt", tmp_path / f"{method}-a.pt"
        assert cli("train", *common, "--finetune", method, "--out", merged).code == 0
        r = cli("train", *common, "--finetune", method, "--save-adapter", "--out", adapter)
        assert r.code == 0, r
        blob = torch.load(adapter, weights_only=True)
        assert blob["arch"] == "adapter" and blob["meta"]["adapter"]["base_model"] == "digits-cnn"
        assert sum(v.numel() for v in blob["state_dict"].values()) == blob["meta"]["adapter"]["trainable"]
        a, m = create_model(str(adapter)), create_model(str(merged))
        x = torch.rand(8, 1, 8, 8)
        with torch.no_grad():
            assert torch.allclose(a.module(x), m.module(x), atol=1e-5), method
        r = cli("run", "--model", adapter, "--n-examples", "8", "--attack", "fgsm", "--eps", "0.05",
                "--db", tmp_path / "r.db")
        assert r.code == 0, r


def test_lora_on_the_shared_resnet20_reports_its_share(cli, tmp_path):
    need(RESNET20)
    need(CIFAR_TRAIN)
    r = cli("train", "--model", ARCH, "--weights", RESNET20, "--mean", CIFAR_MEAN, "--std", CIFAR_STD,
            "--dataset", CIFAR_TRAIN, "--finetune", "lora", "--lora-rank", "4", "--lora-targets", "conv1,conv2",
            "--epochs", "1", "--n-train", "64", "--val-size", "16", "--batch-size", "32", "--out", tmp_path / "l.pt",
            "--allow-failed")
    assert r.code == 0, r
    ad = torch.load(tmp_path / "l.pt", weights_only=True)["meta"]["adapter"]
    assert "model.conv1" in ad["layers"] and "model.layer3.2.conv2" in ad["layers"]   # inside the normalization
    assert len(ad["layers"]) == 19 and 0 < ad["trainable_percent"] < 20


BAD = [
    (["--model", "digits-cnn", "--finetune", "lora", "--lora-targets", "nonesuch"], "matches no"),
    (["--model", "digits-cnn", "--finetune", "lora", "--lora-targets", "fc"], "only the head"),
    (["--model", "digits-cnn", "--finetune", "full", "--lora-rank", "4"], "apply to --finetune lora"),
    (["--model", "digits-cnn", "--finetune", "full", "--save-adapter"], "needs --finetune lora or bitfit"),
    (["--model", "digits-cnn", "--finetune", "lora", "--lora-alpha", "0"], "--lora-alpha"),
]


@pytest.mark.parametrize("args,want", BAD, ids=[" ".join(a[2:]) for a, _ in BAD])
def test_bad_peft_options_are_one_line_exit_2(cli, tmp_path, args, want):
    r = cli("train", *args, "--dataset", "digits", "--epochs", "1", "--n-train", "64", "--out", tmp_path / "x.pt")
    assert r.code == 2 and r.err.count("\n") == 1 and want in r.err, r
    assert not (tmp_path / "x.pt").exists()


def test_lora_on_a_model_without_target_layers_is_one_line(cli, tmp_path):
    arch = tmp_path / "lin.py"
    arch.write_text("import torch.nn as nn\n\ndef net(num_classes: int = 10):\n"
                    "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n")
    r = cli("train", "--model", f"{arch}:net", "--dataset", "digits", "--finetune", "lora", "--epochs", "1",
            "--n-train", "64", "--out", tmp_path / "x.pt")
    assert r.code == 2 and r.err.count("\n") == 1 and "no layer LoRA can adapt" in r.err, r
