"""timm and ViT models (issue 15): `--model timm:NAME`, preprocessing checked against timm's own
`resolve_data_config` / `create_transform` on the real ImageNet photos, tiny configurations (no download) through
`run` and `train`, torchvision's VisionTransformer through `run` and `train`, the offline message.

Never a network call: HF_HUB_OFFLINE=1 for the whole module (and an empty HF_HOME where a download would be
tried)."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

timm = pytest.importorskip("timm")

from tests.conftest import CIFAR_TEST, CIFAR_TRAIN, SHARED, need  # noqa: E402

IMAGENET_VAL = SHARED / "imagenet-sample" / "val"
TINY = "vit_tiny_patch16_224:img_size=32,patch_size=8,depth=2,embed_dim=48,num_heads=2,num_classes=10"


def _tiny_kwargs() -> dict:
    from robustness.models.timm_source import parse_spec
    return parse_spec(TINY)[1]


@pytest.fixture
def tiny_vit(tmp_path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, **_tiny_kwargs()).eval()
    path = tmp_path / "tiny-vit.pth"
    torch.save(net.state_dict(), path)
    return path, net


class _Captured(Exception):
    pass


def _model_input(loaded, x: torch.Tensor) -> torch.Tensor:
    """What the inner timm network receives from the loaded model for pixels `x` (its forward is cut off)."""
    seen = {}
    inner = loaded.module.model

    def hook(module, args):
        seen["x"] = args[0].detach().clone()
        raise _Captured
    h = inner.register_forward_pre_hook(hook)
    try:
        loaded.module(x)
    except _Captured:
        pass
    finally:
        h.remove()
    return seen["x"]


# configurations whose data configs differ: crop_pct 0.9 / 0.95 / 0.875 / 1.0, bicubic / bilinear,
# ImageNet / 0.5 / CLIP mean and std
# (shallower builds of the same configurations: options that leave the data config alone keep CPU time down)
CONFIGS = {"vit_small_patch16_224.augreg_in21k_ft_in1k": {"depth": 1}, "deit_tiny_patch16_224.fb_in1k": {"depth": 1},
           "resnet18.a1_in1k": {}, "resnet18.tv_in1k": {}, "vit_base_patch16_clip_224.openai_ft_in1k": {"depth": 1},
           "convnext_tiny.fb_in1k": {"depths": (1, 1, 1, 1)}}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_preprocessing_equals_timms_own_transform_on_real_photos(name):
    """Our pipeline (data: resize + centre crop to [0, 1] pixels; model: the folded normalization) gives the
    inner network exactly the tensor timm's create_transform(resolve_data_config(model)) makes, photo by photo."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from robustness.data import image_folder
    from robustness.models import ModelOptions
    from robustness.models.timm_source import wrap
    need(IMAGENET_VAL)
    net = timm.create_model(name, pretrained=False, **CONFIGS[name])
    loaded = wrap(net, name, {}, ModelOptions(), weights_path=None, sha=None)
    reference = create_transform(**resolve_data_config(model=net))
    data = image_folder(IMAGENET_VAL, loaded.info.preprocess)
    ds = data.dataset
    picked = range(0, len(ds), 50)          # 20 photos of 20 classes per configuration
    assert len(ds) == 1000
    xs = torch.stack([ds[i][0] for i in picked])
    assert xs.shape[1:] == (3, *loaded.info.input_size) and 0 <= float(xs.min()) and float(xs.max()) <= 1
    ours = _model_input(loaded, xs)
    theirs = torch.stack([reference(Image.open(ds.samples[i][0]).convert("RGB")) for i in picked])
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0), float((ours - theirs).abs().max())


@pytest.mark.slow
def test_preprocessing_equals_timms_on_all_1000_photos():
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from robustness.data import image_folder
    from robustness.models import ModelOptions
    from robustness.models.timm_source import wrap
    need(IMAGENET_VAL)
    net = timm.create_model("deit_tiny_patch16_224.fb_in1k", pretrained=False, depth=1)
    loaded = wrap(net, "deit_tiny_patch16_224.fb_in1k", {}, ModelOptions(), weights_path=None, sha=None)
    reference = create_transform(**resolve_data_config(model=net))
    ds = image_folder(IMAGENET_VAL, loaded.info.preprocess).dataset
    worst = 0.0
    for start in range(0, len(ds), 100):
        idx = range(start, start + 100)
        ours = _model_input(loaded, torch.stack([ds[i][0] for i in idx]))
        theirs = torch.stack([reference(Image.open(ds.samples[i][0]).convert("RGB")) for i in idx])
        worst = max(worst, float((ours - theirs).abs().max()))
    assert worst <= 1e-6


def test_tiny_timm_vit_runs_and_agrees_with_timm_on_every_example(tiny_vit, tmp_path):
    """`run --model timm:...` on real CIFAR images: each example's clean verdict equals the one computed with
    timm's own transform and the same network (state dict loaded into a fresh timm model)."""
    from PIL import Image
    from timm.data import create_transform

    import robustness as rb
    need(CIFAR_TEST)
    path, net = tiny_vit
    ev = rb.evaluate(f"timm:{TINY}", str(CIFAR_TEST), weights=str(path), attacks=["fgsm"], eps=[1 / 255],
                     n_examples=40, subset="first", device="cpu", batch_size=16)
    outcome = ev.per_example[0]
    clean, index = outcome.clean_correct, list(outcome.index)
    assert len(clean) == 40 and index == list(range(40))
    ref_net = timm.create_model("vit_tiny_patch16_224", pretrained=False, **_tiny_kwargs()).eval()
    ref_net.load_state_dict(torch.load(path, weights_only=True))
    tf = create_transform(input_size=(3, 32, 32), crop_pct=1.0, interpolation="bicubic", mean=(0.5,) * 3,
                          std=(0.5,) * 3)
    from robustness.data import image_folder
    ds = image_folder(CIFAR_TEST, None).dataset
    with torch.no_grad():
        x = torch.stack([tf(Image.open(ds.samples[i][0]).convert("RGB")) for i in range(40)])
        pred = ref_net(x).argmax(1)
    y = torch.tensor([ds.samples[i][1] for i in range(40)])
    assert [bool(v) for v in clean] == (pred == y).tolist()
    assert ev.results[0].model.startswith("timm:vit_tiny_patch16_224")


def test_timm_fine_tune_checkpoint_runs_with_no_other_flag(cli, tiny_vit, tmp_path):
    """train --model timm:... writes a checkpoint with arch timm:NAME; run --model OUT needs nothing else and
    computes what the trained network computes (compared through timm's own model class)."""
    need(CIFAR_TRAIN)
    path, _ = tiny_vit
    out = tmp_path / "ft.pt"
    r = cli("train", "--model", f"timm:{TINY}", "--weights", path, "--dataset", CIFAR_TRAIN, "--n-train", "64",
            "--val-size", "16", "--epochs", "1", "--batch-size", "32", "--defense", "fgsm", "--eps", "2/255",
            "--device", "cpu", "--out", out, "--allow-failed")
    assert r.code == 0, r
    blob = torch.load(out, weights_only=True)
    assert blob["arch"] == "timm:vit_tiny_patch16_224" and blob["arch_kwargs"]["kwargs"]["depth"] == 2
    r = cli("run", "--model", out, "--dataset", CIFAR_TEST, "--n-examples", "8", "--attack", "fgsm", "--eps", "1/255",
            "--device", "cpu", "--db", tmp_path / "r.db")
    assert r.code == 0, r
    from robustness.models import create_model
    loaded = create_model(str(out))
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, **_tiny_kwargs()).eval()
    ref.load_state_dict(blob["state_dict"])
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), ref((x - 0.5) / 0.5), atol=1e-5)


def test_offline_pretrained_timm_is_one_line_exit_2(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = cli("run", "--model", "timm:deit_tiny_patch16_224", "--dataset", "digits", "--n-examples", "4")
    assert r.code == 2, r
    line = r.err.strip()
    assert "\n" not in line and "--weights PATH" in line and "HF_HUB_OFFLINE" in line, line


def test_bad_timm_names_and_options_are_one_line(cli, tmp_path):
    for args, want in ((["timm:vit_tinny_patch16_224"], "did you mean"),
                       (["timm:vit_tiny_patch16_224:depth"], "KEY=VALUE"),
                       (["timm:vit_tiny_patch16_224:pretrained=true"], "not an option"),
                       (["timm:vit_tiny_patch16_224:depth=2", "--weights", str(tmp_path / "none.pt")], "not found")):
        r = cli("run", "--model", *args, "--dataset", "digits", "--n-examples", "4")
        assert r.code == 2 and r.err.count("\n") == 1 and want in r.err, (args, r)


def test_weights_that_do_not_fit_say_so(cli, tiny_vit):
    path, _ = tiny_vit
    r = cli("run", "--model", "timm:vit_tiny_patch16_224:img_size=32,patch_size=8,depth=3,embed_dim=48,num_heads=2,"
            "num_classes=10", "--weights", path, "--dataset", "digits", "--n-examples", "4")
    assert r.code == 2 and "do not fit" in r.err, r


TV_VIT = '''
import torch.nn as nn
from torchvision.models.vision_transformer import VisionTransformer

def tiny_vit(num_classes: int = 10) -> nn.Module:
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=num_classes)
'''


def test_torchvision_vision_transformer_through_run_and_train(cli, tmp_path):
    """torchvision's VisionTransformer (the vit_b_16 class, in a tiny configuration) evaluates and fine-tunes;
    its head (heads.head) is found and the checkpoint reloads."""
    need(CIFAR_TRAIN)
    arch = tmp_path / "tvvit.py"
    arch.write_text(TV_VIT)
    torch.manual_seed(0)
    import importlib.util
    spec = importlib.util.spec_from_file_location("tvvit", arch)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.save(mod.tiny_vit().state_dict(), tmp_path / "w.pt")
    model = [f"{arch}:tiny_vit", "--weights", tmp_path / "w.pt", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]
    r = cli("run", "--model", *model, "--dataset", CIFAR_TEST, "--n-examples", "8", "--attack", "pgd",
            "--eps", "1/255", "--device", "cpu", "--db", tmp_path / "r.db")
    assert r.code == 0, r
    r = cli("train", "--model", *model, "--dataset", CIFAR_TRAIN, "--n-train", "32", "--val-size", "8", "--epochs", "1",
            "--batch-size", "16", "--finetune", "linear", "--device", "cpu", "--out", tmp_path / "ft.pt",
            "--allow-failed")
    assert r.code == 0, r
    blob = torch.load(tmp_path / "ft.pt", weights_only=True)
    assert blob["meta"]["recipe"]["finetune"] == "linear"


def test_list_models_shows_timm(cli):
    r = cli("list", "models")
    assert r.code == 0 and "timm:NAME" in r.out and "float:PATH" in r.out
