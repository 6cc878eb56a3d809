"""medvit.models: registry, shapes, ViT grids, seed models' sizes, weights from disk."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medvit.errors import ConfigError
from medvit.models import (
    backbone_kind,
    create_backbone,
    list_backbones,
    load_weights,
    register_backbone,
)
from medvit.models import registry



pytestmark = pytest.mark.usefixtures("one_thread")  # models build faster on one thread here

# slow to build for real on a shared 2-core machine: checked on the meta device
BIG = {"vit_tiny", "vit_small", "vit_base", "resnet34", "resnet50", "efficientnet_b3",
       "convnext_tiny"}
# the seed documents work at 32×32
SEEDS_32 = {"basic_cnn", "basic_vit", "vit_cifar", "vgg_cifar", "baseline_cnn"}
REQUIRED = {"vit", "vit_tiny", "vit_small", "vit_base", "resnet18", "resnet50",
            "efficientnet_b0", "convnext_tiny", "convnext_nano", "basic_cnn", "basic_vit",
            "vit_cifar", "vgg_cifar", "baseline_cnn", "vit_test", "cnn_test"}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- registry -----------------------------------------------------------------------------

def test_list_contains_required_and_filters():
    names = list_backbones()
    assert REQUIRED <= set(names)
    assert names == sorted(names)
    assert set(list_backbones("convnext*")) == {"convnext_nano", "convnext_tiny"}
    assert list_backbones("no_such*") == []


def test_unknown_name_suggests_close_match():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet5'.*'resnet50'"):
        create_backbone("resnet5")
    with pytest.raises(ConfigError, match="did you mean 'vit_small'"):
        backbone_kind("vit_smal")


def test_unknown_option_is_named_with_suggestion():
    with pytest.raises(ConfigError, match="no option 'patchsize'.*'patch_size'"):
        create_backbone("vit_test", patchsize=8, img_size=64)
    with pytest.raises(ConfigError, match="no option 'patch_size'"):
        create_backbone("resnet18", patch_size=16)


def test_neutral_options_accepted_by_every_backbone():
    model = create_backbone("vgg_cifar", img_size=32, drop_rate=0.0, drop_path_rate=0.0,
                            pretrained=False)
    assert "drop_rate" not in model.medvit_args
    with pytest.raises(ConfigError, match="no option 'drop_rate'"):
        create_backbone("vgg_cifar", img_size=32, drop_rate=0.1)


@pytest.mark.parametrize("bad", [dict(num_classes=0), dict(in_chans=-1), dict(img_size=2.5)])
def test_bad_sizes_rejected(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        create_backbone("cnn_test", **bad)


def test_patch_must_divide_image():
    with pytest.raises(ConfigError, match="not a multiple of patch_size 16"):
        create_backbone("vit_test", img_size=72, patch_size=16)


def test_register_custom_backbone_and_duplicate(monkeypatch):
    monkeypatch.setattr(registry, "_BACKBONES", dict(registry._BACKBONES))
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))

    @register_backbone("my_net")
    def build(num_classes: int, in_chans: int, img_size: int) -> nn.Module:
        model = nn.Sequential(nn.Conv2d(in_chans, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(4, num_classes))
        model.gradcam_layer = "0"
        return model

    assert "my_net" in list_backbones()
    assert backbone_kind("my_net") == "cnn"  # undeclared kind: read off the built model
    assert create_backbone("my_net", num_classes=3)(torch.zeros(1, 1, 8, 8)).shape == (1, 3)
    with pytest.raises(ValueError, match="twice"):
        register_backbone("my_net")(build)


def test_cnn_without_gradcam_layer_is_rejected(monkeypatch):
    monkeypatch.setattr(registry, "_BACKBONES", dict(registry._BACKBONES))
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))
    register_backbone(lambda num_classes, in_chans, img_size: nn.Linear(1, 1), name="no_cam",
                      kind="cnn")
    with pytest.raises(ConfigError, match="gradcam_layer"):
        create_backbone("no_cam")


# ---- every backbone -----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(set(list_backbones()) - BIG))
def test_forward_shape_and_attributes(name):
    size = 32 if name in SEEDS_32 else 64
    model = create_backbone(name, num_classes=3, in_chans=1, img_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, size, size))
    assert out.shape == (2, 3) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert model.medvit_name == name
    assert model.medvit_kind == backbone_kind(name) == backbone_kind(model)
    assert model.medvit_args["num_classes"] == 3 and model.medvit_args["img_size"] == size


@pytest.mark.parametrize("name", sorted(BIG))
def test_big_backbones_build_on_meta(name):
    with torch.device("meta"):
        model = create_backbone(name, num_classes=1, in_chans=1, img_size=64)
    assert next(model.parameters()).device.type == "meta"
    assert model.medvit_kind == backbone_kind(name)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1


def test_kind_names():
    kinds = {n: backbone_kind(n) for n in list_backbones()}
    assert {n for n, k in kinds.items() if k == "vit"} == {
        "vit", "vit_tiny", "vit_small", "vit_base", "vit_test", "basic_vit", "vit_cifar"}
    wrapped = nn.Module()
    wrapped.module = create_backbone("vit_test", img_size=32)  # as DDP holds it
    assert backbone_kind(wrapped) == "vit"


@pytest.mark.parametrize("name", sorted(n for n in list_backbones() if backbone_kind(n) == "cnn"))
def test_gradcam_layer_is_a_conv_stage(name):
    if name in BIG:
        with torch.device("meta"):
            model = create_backbone(name, img_size=64)
    else:
        model = create_backbone(name, img_size=32)
    layer = model.get_submodule(model.gradcam_layer)
    # a real stage: it holds (or follows) convolutions and is not the classifier
    assert not isinstance(layer, nn.Linear)
    names = [n for n, _ in model.named_modules()]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert names.index(model.gradcam_layer) > names.index(convs[-1]) or any(
        c.startswith(model.gradcam_layer + ".") for c in convs)


def test_resnet_gradcam_layer_is_layer4():
    assert create_backbone("resnet18").gradcam_layer == "layer4"


# ---- ViT grids and attention --------------------------------------------------------------

@pytest.mark.parametrize("patch,grid", [(8, 8), (16, 4), (32, 2)])
def test_vit_patch_grid_from_model(patch, grid):
    model = create_backbone("vit_test", img_size=64, patch_size=patch)
    assert tuple(model.patch_embed.grid_size) == (grid, grid)
    assert model.pos_embed.shape[1] == grid * grid + 1  # + CLS
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 1)


def test_vit_at_512_is_the_rsna_model_with_fused_attention():
    model = create_backbone("vit", patch_size=16)  # defaults: 512×512, one channel, 1 logit
    assert tuple(model.patch_embed.grid_size) == (32, 32)
    assert model.patch_embed.proj.in_channels == 1
    assert len(model.blocks) == 6 and model.embed_dim == 256 and model.num_classes == 1
    for blk in model.blocks:
        assert blk.attn.fused_attn is True
        assert blk.attn.num_heads == 8 and blk.mlp.fc1.out_features == 512
        assert blk.attn.qkv.out_features == 3 * 256
        assert blk.attn.scale == pytest.approx(32 ** -0.5)
    model8 = create_backbone("vit", patch_size=8)
    assert tuple(model8.patch_embed.grid_size) == (64, 64)  # 4096 tokens


def test_vit_fused_attention_matches_explicit_softmax():
    """What medvit.explain recomputes from qkv must be what the fused kernel computed."""
    model = create_backbone("vit_test", img_size=32, patch_size=8).eval()
    attn = model.blocks[0].attn
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        fused = attn(x)
        B, N, C = x.shape
        q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(
            2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) * attn.scale).softmax(-1)
        manual = attn.proj((weights @ v).transpose(1, 2).reshape(B, N, C))
    assert torch.allclose(fused, manual, atol=1e-5)


def test_vit_dropout_options_reach_the_blocks():
    model = create_backbone("vit_test", img_size=32, drop_rate=0.1, drop_path_rate=0.2)
    assert model.pos_drop.p == 0.1 and model.blocks[0].mlp.drop1.p == 0.1
    # no dropout on the attention weights: it would push SDPA off its fused kernel on a CPU
    assert model.blocks[0].attn.attn_drop.p == 0.0 and model.blocks[0].attn.fused_attn
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)


# ---- the seed models ----------------------------------------------------------------------

def test_seed_parameter_counts_match_documents():
    # 003: ViT 3.2 M (12.781 MB), VGG-like CNN 5.9 M (23.409 MB), both at 3×32×32, 10 classes
    vit = create_backbone("vit_cifar", num_classes=10, in_chans=3, img_size=32)
    vgg = create_backbone("vgg_cifar", num_classes=10, in_chans=3, img_size=32)
    assert abs(n_params(vit) - 3.2e6) / 3.2e6 < 0.03
    assert abs(n_params(vgg) - 5.9e6) / 5.9e6 < 0.03
    assert n_params(vit) * 4 / 1e6 == pytest.approx(12.781, abs=1e-3)
    assert n_params(vgg) * 4 / 1e6 == pytest.approx(23.409, abs=1e-3)
    assert vit.blocks[0].attn.attn_drop.p == 0.2  # "dropout 0.2"


def test_seed_cnns_accept_other_sizes_without_growing():
    vgg = create_backbone("vgg_cifar", num_classes=2, img_size=96)
    assert vgg(torch.randn(1, 1, 96, 96)).shape == (1, 2)
    assert n_params(vgg) == n_params(create_backbone("vgg_cifar", num_classes=2, img_size=32))


def test_basic_cnn_widths_follow_c1():
    model = create_backbone("basic_cnn", num_classes=10, img_size=32, width=6)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [6, 12, 24]
    assert all(c.kernel_size == (5, 5) and c.padding == (2, 2) for c in convs)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(24 * 16, 24), (24, 10)]
    assert sum(isinstance(m, nn.AvgPool2d) for m in model.modules()) == 3


def test_basic_vit_heads_and_depth():
    model = create_backbone("basic_vit", num_classes=10, img_size=32, width=64, heads=4, depth=3)
    assert len(model.blocks) == 3 and model.blocks[0].attn.num_heads == 4
    assert model.blocks[0].mlp.fc1.out_features == 128  # h_dim = 2 h_embed
    assert tuple(model.patch_embed.grid_size) == (8, 8)  # patch 4 at 32


def test_baseline_cnn_layers():
    model = create_backbone("baseline_cnn", num_classes=2, img_size=32)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [6, 12, 24]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 3  # 2 hidden + output


# ---- weights ------------------------------------------------------------------------------

def test_weights_file_adapts_rgb_stem_and_drops_classifier(tmp_path):
    src = create_backbone("resnet18", num_classes=1000, in_chans=3)
    path = tmp_path / "resnet18_rgb.pth"
    torch.save(src.state_dict(), path)
    model = create_backbone("resnet18", num_classes=1, in_chans=1, weights=str(path))
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.allclose(model.conv1.weight, src.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(model.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    assert model.fc.weight.shape == (1, 512)


def test_weights_file_vit_resamples_positions(tmp_path):
    from safetensors.torch import save_file

    src = create_backbone("vit_test", num_classes=10, in_chans=3, img_size=32, patch_size=8)
    path = tmp_path / "vit_rgb.safetensors"
    save_file(src.state_dict(), str(path))
    model = create_backbone("vit_test", in_chans=1, img_size=64, patch_size=8, weights=path)
    w = model.patch_embed.proj.weight
    assert torch.allclose(w, src.patch_embed.proj.weight.sum(1, keepdim=True))
    assert model.pos_embed.shape == (1, 8 * 8 + 1, 32)
    assert torch.allclose(model.pos_embed[:, 0], src.pos_embed[:, 0])  # CLS position kept
    assert torch.equal(model.blocks[1].attn.qkv.weight, src.blocks[1].attn.qkv.weight)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 1)


def test_weights_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.pth: weights file not found"):
        create_backbone("cnn_test", weights=tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="junk.pth: cannot read weights"):
        create_backbone("cnn_test", weights=junk)
    other = tmp_path / "vit.pth"
    torch.save(create_backbone("vit_test", img_size=32).state_dict(), other)
    with pytest.raises(ConfigError, match="vit.pth: does not match the model"):
        create_backbone("cnn_test", weights=other)


def test_load_weights_in_place_from_wrapped_checkpoint(tmp_path):
    src = create_backbone("cnn_test", in_chans=3, num_classes=2)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    model = load_weights(create_backbone("cnn_test", num_classes=2), path)
    stem = model.stage1[0].weight
    assert torch.allclose(stem, src.stage1[0].weight.sum(1, keepdim=True))
    assert torch.equal(model.fc.weight, src.fc.weight)  # same num_classes: classifier kept


def test_pretrained_unavailable_is_a_config_error(monkeypatch):
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        create_backbone("vit", pretrained=True)
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        create_backbone("vit_tiny", patch_size=8, pretrained=True)  # timm has no such model

    import timm.models._builder as builder

    def offline(*args, **kwargs):
        raise OSError("hub unreachable")

    monkeypatch.setattr(builder, "load_pretrained", offline)  # the network is never touched
    with pytest.raises(ConfigError, match="could not fetch ImageNet weights.*hub unreachable"):
        create_backbone("resnet18", pretrained=True)
    with pytest.raises(ConfigError, match="vit_small_patch32_224.*hub unreachable"):
        create_backbone("vit_small", patch_size=32, img_size=64, pretrained=True)


def test_pretrained_normalisation_from_a_local_weights_file(tmp_path):
    """Issue 11: ImageNet weights were fed [0, 1] images. Their timm pretrained_cfg mean/std
    (averaged over RGB for the one-channel stem timm sums) is applied by the model itself,
    stored in the checkpoint and re-attached wherever a checkpoint is loaded (evaluate,
    explain, predict all build through build_model_from_checkpoint). No hub: a local file."""
    from fake_cache import make_manifest
    from medvit._compat import import_timm
    from medvit.config import load_config
    from medvit.train import fit
    from medvit.train.checkpoint import build_model_from_checkpoint, load_checkpoint

    weights = tmp_path / "imagenet.pth"
    torch.save(import_timm().create_model("resnet10t", pretrained=False, num_classes=1000).state_dict(), weights)
    mean, std = float(np.mean([0.485, 0.456, 0.406])), float(np.mean([0.229, 0.224, 0.225]))
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))

    model = create_backbone("resnet10t", num_classes=1, in_chans=1, img_size=32, weights=str(weights)).eval()
    assert (model.medvit_input_norm["mean"] == pytest.approx([mean])
            and model.medvit_input_norm["std"] == pytest.approx([std]))
    bare = create_backbone("resnet10t", num_classes=1, in_chans=1, img_size=32).eval()
    assert getattr(bare, "medvit_input_norm", None) is None  # from scratch: identity
    bare.load_state_dict(model.state_dict())  # state dicts unchanged: the statistics are not in them
    with torch.no_grad():
        torch.testing.assert_close(model(x), bare((x - mean) / std))

    data = make_manifest(tmp_path / "data", 32, n_patients=4)
    cfg = load_config(None, [f"data.dir={data}", "data.image_size=32", "data.batch_size=4", "data.workers=0",
                             "model.backbone=resnet10t", f"model.weights={weights}", "train.max_steps=1",
                             "train.device=cpu"])
    fit(cfg, tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["input_norm"]["mean"] == pytest.approx([mean]) and ckpt["input_norm"]["std"] == pytest.approx([std])
    loaded = build_model_from_checkpoint(ckpt)
    bare.load_state_dict(ckpt["model"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), bare((x - mean) / std))
    # a medvit checkpoint as --weights brings the normalisation it was trained with (none from scratch)
    again = create_backbone("resnet10t", num_classes=1, in_chans=1, img_size=32,
                            weights=str(tmp_path / "run" / "checkpoints" / "last.pt"))
    assert again.medvit_input_norm == ckpt["input_norm"]
    scratch = tmp_path / "scratch.pt"
    torch.save({"format": "medvit-checkpoint-1", "model": bare.state_dict(), "input_norm": None}, scratch)
    assert create_backbone("resnet10t", num_classes=1, in_chans=1, img_size=32,
                           weights=str(scratch)).medvit_input_norm is None


def test_timm_vits_are_generated_by_one_builder():
    """Issue 11: vit_tiny / vit_small / vit_base had identical bodies; one generated entry each."""
    from medvit.models.vit import _TIMM_WIDTHS

    entries = [registry._BACKBONES[f"vit_{size}"] for size in ("tiny", "small", "base")]
    assert len({fn.__code__ for fn in entries}) == 1
    assert [fn.__name__ for fn in entries] == ["vit_tiny", "vit_small", "vit_base"]
    for size, (embed, depth, heads) in _TIMM_WIDTHS.items():
        with torch.device("meta"):
            model = create_backbone(f"vit_{size}", img_size=32, patch_size=16)
        assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (embed, depth, heads)
