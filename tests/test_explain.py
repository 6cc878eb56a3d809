"""medvit.explain: ViT attention / rollout, CNN Grad-CAM, overlays, pointing game, `medvit explain`."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from medvit.cli import main
from medvit.config import load_config
from medvit.errors import ConfigError
from medvit.explain import (
    attention_maps,
    attention_rollout,
    class_mean_maps,
    cls_attention,
    explain,
    gradcam,
    lesion_mask_in_model_space,
    pointing_game,
    save_overlay,
    save_panel,
)
from medvit.explain.attention import attention_from_input, block_output_from_attention
from medvit.models import create_backbone

from fake_cache import make_manifest

SIZE = 64


def vit(img_size: int = SIZE, patch: int = 8, **kw) -> nn.Module:
    torch.manual_seed(0)
    return create_backbone("vit_test", num_classes=1, in_chans=1, img_size=img_size, patch_size=patch, **kw)


def images(n: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(1))


def hooks_left(model: nn.Module) -> list[str]:
    tables = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return [f"{name or 'model'}.{t}" for name, m in model.named_modules() for t in tables if getattr(m, t)]


# ------------------------------------------------------------------------------ attention

def test_attention_rows_sum_to_one_and_reproduce_the_block_output():
    model = vit().eval()
    x = images()
    seen = {}
    handles = [model.blocks[1].attn.register_forward_hook(
        lambda mod, args, out: seen.update(tokens=args[0], out=out))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    maps = attention_maps(model, x)
    n_tokens = 1 + (SIZE // 8) ** 2
    assert maps.shape == (2, 2, 2, n_tokens, n_tokens)  # (B, L, H, N, N)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 2, n_tokens))
    attn = model.blocks[1].attn
    with torch.no_grad():
        weights = attention_from_input(attn, seen["tokens"])
        rebuilt = block_output_from_attention(attn, seen["tokens"], weights)
    torch.testing.assert_close(weights, maps[:, 1])
    # our softmax(q kᵀ scale) @ v through proj == what F.scaled_dot_product_attention gave the block
    torch.testing.assert_close(rebuilt, seen["out"], atol=1e-5, rtol=1e-4)
    assert all(blk.attn.fused_attn for blk in model.blocks)


def test_fused_attention_and_hooks_survive_an_exception():
    model = vit()
    with pytest.raises(RuntimeError):
        attention_maps(model, torch.rand(1, 3, SIZE, SIZE))  # 3 channels into a 1-channel stem
    assert all(blk.attn.fused_attn for blk in model.blocks)
    assert hooks_left(model) == []
    attention_rollout(model, images(1))
    assert hooks_left(model) == [] and model.training  # mode restored too


def test_cls_attention_is_the_cls_row_over_the_patch_grid():
    model = vit()
    x = images()
    cls = cls_attention(model, x)
    assert cls.shape == (2, 2, 2, 8, 8)  # (B, L, H, gh, gw)
    full = attention_maps(model, x)[:, :, :, 0, 1:].reshape(2, 2, 2, 8, 8)
    torch.testing.assert_close(cls, full)
    assert cls.mean(2).shape == (2, 2, 8, 8)


@pytest.mark.parametrize("patch,grid", [(8, 8), (16, 4), (32, 2)])
def test_rollout_grid_follows_the_patch_size(patch, grid):
    model = vit(patch=patch)
    assert tuple(model.patch_embed.grid_size) == (grid, grid)
    assert attention_rollout(model, images()).shape == (2, grid, grid)
    assert explain(model, images()).shape == (2, SIZE, SIZE)


def test_rollout_at_512():
    big = create_backbone("vit", num_classes=1, in_chans=1, img_size=512, patch_size=16)
    assert tuple(big.patch_embed.grid_size) == (32, 32)
    model = create_backbone("vit", num_classes=1, in_chans=1, img_size=512, patch_size=32)
    roll = attention_rollout(model, images(1, 512))
    assert roll.shape == (1, 16, 16)
    maps = explain(model, images(1, 512))
    assert maps.shape == (1, 512, 512) and maps.dtype == np.float32
    assert maps.min() == 0.0 and maps.max() == 1.0


def _reference_rollout(layers: torch.Tensor, fusion: str, discard: float) -> torch.Tensor:
    """Dense rollout from (B, L, H, N, N) maps: fuse heads, drop the smallest weights (not the
    CLS column), 0.5·A + 0.5·I, renormalise rows, multiply the layers."""
    n = layers.shape[-1]
    ref = None
    for layer in layers.unbind(1):  # first layer first
        a = {"mean": layer.mean(1), "max": layer.amax(1), "min": layer.amin(1)}[fusion]
        if discard:
            for b in range(a.shape[0]):
                flat = a[b].flatten().clone()
                low = flat.topk(int(n * n * discard), largest=False).indices
                keep_cls = low % n == 0
                flat[low[~keep_cls]] = 0
                a[b] = flat.reshape(n, n)
        a = 0.5 * a + 0.5 * torch.eye(n)
        a = a / a.sum(-1, keepdim=True)
        ref = a if ref is None else a @ ref  # A_l' · (A_{l-1}' · … · A_1')
    return ref[:, 0, 1:]


@pytest.mark.parametrize("fusion,discard", [("mean", 0.0), ("max", 0.0), ("min", 0.0), ("mean", 0.3), ("max", 0.5)])
def test_rollout_matches_the_matrix_product(fusion, discard):
    model = vit()
    x = images()
    ref = _reference_rollout(attention_maps(model, x), fusion, discard)
    got = attention_rollout(model, x, discard_ratio=discard, head_fusion=fusion)
    torch.testing.assert_close(got, ref.reshape(2, 8, 8))


def test_uniform_attention_gives_the_known_rollout():
    model = vit()
    dim = model.embed_dim
    with torch.no_grad():
        for blk in model.blocks:  # q = k = 0: every score equal, attention uniform (1/N)
            blk.attn.qkv.weight[: 2 * dim] = 0
            blk.attn.qkv.bias[: 2 * dim] = 0
    x = images()
    n = 65
    torch.testing.assert_close(attention_maps(model, x), torch.full((2, 2, 2, n, n), 1 / n))
    depth = len(model.blocks)
    # (0.5 P + 0.5 I)^L with P = 11ᵀ/N: the CLS row gives every patch (1 - 0.5^L) / N
    expected = torch.full((2, 8, 8), (1 - 0.5 ** depth) / n)
    torch.testing.assert_close(attention_rollout(model, x), expected)
    assert attention_rollout(model, x, discard_ratio=0.5, head_fusion="max").shape == (2, 8, 8)


def test_rollout_options_are_checked():
    with pytest.raises(ConfigError, match="did you mean 'mean'"):
        attention_rollout(vit(), images(), head_fusion="meen")
    with pytest.raises(ConfigError, match="discard_ratio"):
        attention_rollout(vit(), images(), discard_ratio=1.0)


# ------------------------------------------------------------------------------- Grad-CAM

class Quadrants(nn.Module):
    """Keeps channel c of a 4-channel map only in quadrant c (TL, TR, BL, BR)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        quads = torch.zeros(1, 4, size, size)
        h = size // 2
        for c, (ys, xs) in enumerate([(slice(0, h), slice(0, h)), (slice(0, h), slice(h, None)),
                                      (slice(h, None), slice(0, h)), (slice(h, None), slice(h, None))]):
            quads[0, c, ys, xs] = 1
        self.register_buffer("quads", quads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.quads


class QuadrantCNN(nn.Sequential):
    """A CNN with a known answer: the last conv stage `features` has four channels, channel c
    being the (ReLU'd) input inside quadrant c only; the classifier after global pooling reads
    only the top-left channel. Only the top-left quadrant can move the logit, so Grad-CAM must
    peak there, and be ~0 in the other three."""

    def __init__(self, size: int = 32) -> None:
        conv = nn.Conv2d(1, 4, 1, bias=False)
        nn.init.ones_(conv.weight)
        fc = nn.Linear(4, 1)
        with torch.no_grad():
            fc.weight.zero_()
            fc.weight[0, 0] = 1.0
            fc.bias.zero_()
        super().__init__()
        self.add_module("features", nn.Sequential(conv, nn.ReLU(), Quadrants(size)))
        self.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
        self.add_module("fc", fc)
        self.gradcam_layer = "features"
        self.medvit_kind = "cnn"


def test_gradcam_known_answer_points_to_the_top_left_quadrant():
    model = QuadrantCNN().eval()
    x = 0.5 + 0.5 * torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    cam = gradcam(model, x)
    assert cam.shape == (3, 32, 32) and cam.min() >= 0 and cam.max() <= 1
    for m in cam:
        y, xx = np.unravel_index(int(m.argmax()), m.shape)
        assert y < 16 and xx < 16, (y, xx)  # high = important (MONAI's own normaliser flips this)
        assert m[:16, :16].mean() > 0.4 and m[20:, 20:].max() < 0.05
    assert hooks_left(model) == []
    maps = explain(model, x)  # auto -> gradcam for a CNN
    assert maps.shape == (3, 32, 32) and (maps[:, :16, :16].mean() > maps[:, 16:, 16:].mean() + 0.3)


def test_gradcam_releases_hooks_also_after_an_exception():
    model = create_backbone("cnn_test", num_classes=3, in_chans=1, img_size=SIZE)
    cam = gradcam(model, images(4))  # per-image predicted class: grouped by target
    assert cam.shape == (4, SIZE, SIZE)
    assert hooks_left(model) == []
    assert all(p.grad is None for p in model.parameters())  # no parameter-sized buffers left
    assert gradcam(model, images(2), target_class=2).shape == (2, SIZE, SIZE)
    with pytest.raises(RuntimeError):
        gradcam(model, torch.rand(2, 3, SIZE, SIZE))
    assert hooks_left(model) == []
    with pytest.raises(ConfigError, match="out of range"):
        gradcam(model, images(1), target_class=5)
    assert hooks_left(model) == []


def test_gradcam_matches_monai_reference():
    """medvit's own Grad-CAM (hooks it holds itself) equals MONAI's GradCAM on the same model."""
    import copy

    from medvit._compat import import_torchvision

    import_torchvision()
    from monai.visualize import GradCAM

    from medvit.explain import unit_range

    model = create_backbone("cnn_test", num_classes=3, in_chans=1, img_size=SIZE).eval()
    x = images(4)
    for cls in (0, 2):
        ref_model = copy.deepcopy(model)  # MONAI leaves its hooks behind: on a copy
        ref = GradCAM(nn_module=ref_model, target_layers="stage3", postprocessing=unit_range)(x, class_idx=cls)
        torch.testing.assert_close(gradcam(model, x, target_class=cls), ref[:, 0].float(), atol=1e-5, rtol=0)
    binary = create_backbone("cnn_test", num_classes=1, in_chans=1, img_size=SIZE).eval()
    ref = GradCAM(nn_module=copy.deepcopy(binary), target_layers="stage3", postprocessing=unit_range)(x, class_idx=0)
    torch.testing.assert_close(gradcam(binary, x), ref[:, 0].float(), atol=1e-5, rtol=0)


def test_gradcam_leaves_other_hooks_alone():
    """Issue 11: cleanup edited torch's private hook tables, deleting every hook added meanwhile,
    also ones that are not Grad-CAM's. Holding its own handles, Grad-CAM removes only its own."""
    model = create_backbone("cnn_test", num_classes=1, in_chans=1, img_size=SIZE).eval()
    seen = []

    class Lazy(nn.Module):  # registers a hook of its own on the first forward (lazy set-up)
        def forward(self, x):
            if not seen:
                seen.append(model.fc.register_forward_hook(lambda m, a, out: seen.append(out.shape)))
            return x

    model.stage1.add_module("lazy", Lazy())
    gradcam(model, images(2))
    fired = len(seen)
    with torch.no_grad():
        model(images(2))
    assert len(seen) == fired + 1  # the model's own hook is still there and fired again
    seen[0].remove()
    assert hooks_left(model) == []


def test_method_errors():
    cnn = create_backbone("cnn_test", num_classes=1, in_chans=1, img_size=SIZE)
    with pytest.raises(ConfigError, match="did you mean 'rollout'"):
        explain(vit(), images(), "rolout")
    with pytest.raises(ConfigError, match="is a ViT"):
        explain(vit(), images(), "gradcam")
    with pytest.raises(ConfigError, match="is a CNN"):
        explain(cnn, images(), "attention")
    with pytest.raises(ConfigError, match="gradcam_layer"):
        gradcam(vit(), images())


def test_class_mean_maps():
    x = images(4)
    loader = [(x[:2], torch.tensor([0, 1])), (x[2:], torch.tensor([1, 1]))]
    means = class_mean_maps(vit(), loader, "attention")
    each = explain(vit(), x, "attention")
    assert sorted(means) == [0, 1]
    np.testing.assert_allclose(means[0], each[0], atol=1e-6)
    np.testing.assert_allclose(means[1], each[1:].mean(0), atol=1e-6)


# ------------------------------------------------------------------------- pointing game

def test_pointing_game_known_case():
    hit = np.zeros((16, 16), np.float32)
    hit[3, 3] = 1.0
    miss = np.zeros((16, 16), np.float32)
    miss[12, 12] = 1.0
    mask = np.zeros((64, 64), np.uint8)
    mask[8:20, 8:20] = 255  # map cells 2..4
    empty = np.zeros((64, 64), np.uint8)
    result = pointing_game([hit, miss, hit], [mask, mask, empty], tolerance=0.0)
    assert result == {"hits": 1, "n": 2, "score": 0.5, "hits_strict": 1, "score_strict": 0.5,
                      "tolerance": 0.0, "skipped": 1}
    assert pointing_game([hit], [mask])["tolerance"] == pytest.approx(15 / 224)  # Zhang et al.'s default
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game([hit], [mask], tolerance=-0.1)
    near = np.zeros((16, 16), np.float32)
    near[3, 7] = 1.0  # three cells right of the mask's last column (4)
    assert pointing_game([near], [mask], tolerance=1 / 16)["hits"] == 0  # 1 cell: too far
    assert pointing_game([near], [mask], tolerance=2.9 / 16)["hits"] == 0
    loose = pointing_game([near, miss], [mask, mask], tolerance=3 / 16)  # 3 cells
    assert (loose["hits"], loose["hits_strict"], loose["score"]) == (1, 0, 0.5)
    with pytest.raises(ValueError):
        pointing_game([hit], [])


def test_mask_geometry_crop_flip_resize(tmp_path):
    stored = np.zeros((40, 60), np.uint8)  # rows x cols, as in the DICOM
    stored[10:15, 50:55] = 255
    png = tmp_path / "m.png"
    cv2.imwrite(str(png), stored)
    info = {"crop_y0": "0", "crop_x0": "20", "crop_y1": "40", "crop_x1": "60", "flipped": "1",
            "rows": "40", "columns": "60"}
    mask = lesion_mask_in_model_space(png, info, 40)
    expected = np.zeros((40, 40), bool)
    expected[10:15, 5:10] = True  # crop cols 30..34, mirrored: 39-34 .. 39-30
    np.testing.assert_array_equal(mask, expected)
    half = lesion_mask_in_model_space(png, info | {"flipped": "0"}, 20)  # not flipped, halved
    assert half.shape == (20, 20) and half[5:7, 15:17].all() and half.sum() <= 9
    wide = {"crop_y0": 0, "crop_x0": 0, "crop_y1": 20, "crop_x1": 60, "flipped": False}  # 20x60 box
    stored2 = np.zeros((40, 60), np.uint8)
    stored2[0:20, 0:6] = 255
    cv2.imwrite(str(png), stored2)
    padded = lesion_mask_in_model_space(png, wide, 30)  # scaled to 10x30, centred vertically
    assert padded[10:20, 0:3].all() and padded.sum() == 30
    with pytest.raises(Exception, match="belongs to another image"):
        lesion_mask_in_model_space(png, info | {"rows": "41"}, 40)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> tuple[Path, Path]:
    """Two synth patients (one L and one R positive) ingested at 128 px."""
    from pydicom.uid import ExplicitVRLittleEndian

    from medvit.dicom.synth import write_dataset
    from medvit.ingest import ingest

    root = tmp_path_factory.mktemp("synth")
    write_dataset(root / "synth", patients=2, seed=3, cancer_rate=1.0, workers=1,
                  syntaxes=[str(ExplicitVRLittleEndian)])
    ingest(root / "synth", root / "data", size=128, workers=1, progress=False, log=lambda m: None)
    return root / "synth", root / "data"


def test_synth_lesion_masks_land_on_the_lesions(synth_data):
    synth, data = synth_data
    manifest = pd.read_csv(data / "manifest.csv", dtype={"image_id": str})
    checked = set()
    for _, row in manifest.iterrows():
        png = synth / "lesion_masks" / f"{row.image_id}.png"
        if not png.is_file():
            continue
        image = np.load(data / row.cache).astype(np.float32) / 65535

        def contrast(info: dict) -> float:
            mask = lesion_mask_in_model_space(png, info, 128)
            ring = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~mask
            return float(image[mask].mean() - image[ring].mean())

        right = contrast(row.to_dict())
        mirrored = contrast(row.to_dict() | {"flipped": 1 - int(row.flipped)})
        assert right > 0.3 and right > mirrored + 0.1, (row.image_id, right, mirrored)
        checked.add(int(row.flipped))
    assert checked == {0, 1}  # a left and a (flipped) right breast


# ------------------------------------------------------------------------------- overlays

def test_overlay_and_panel_pngs(tmp_path):
    image = (np.random.default_rng(0).random((96, 96)) * 65535).astype(np.uint16)
    heat = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    out = save_overlay(image, heat, tmp_path / "sub" / "a_rollout.png", title="a rollout")
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        w, h = im.size
        assert im.format == "PNG" and 300 < w < 1500 and 300 < h < 1500
        rgb = np.asarray(im.convert("RGB"), dtype=int)
    hot, cold = rgb[h - 12, 500], rgb[40, 12]  # the map's 1 (bottom right) and 0 (top left) corners
    # inferno is (252, 255, 164) at 1 and (0, 0, 4) at 0, blended at 0.45 over grey: R - B ~ 40 vs ~ -2
    assert hot[0] - hot[2] > 25 and abs(cold[0] - cold[2]) < 10
    panel = save_panel(image.astype(np.float32) / 65535, {"vit rollout": heat, "cnn gradcam": heat[::-1]},
                       tmp_path / "a_panel.png", title="a")
    with Image.open(panel) as im:
        assert im.size[0] > 2 * im.size[1]  # three images side by side
    names = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert names == ["a_panel.png", "a_rollout.png"]  # no temp files left
    with pytest.raises(ValueError):
        save_overlay(image, heat[0], tmp_path / "bad.png")


# ------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    from medvit.train import fit

    root = tmp_path_factory.mktemp("explain_runs")
    data = make_manifest(root / "data", SIZE, n_patients=6, blob=5)
    out = {}
    for backbone in ("vit_test", "cnn_test"):
        cfg = load_config(None, [f"data.dir={data}", f"data.image_size={SIZE}", "data.batch_size=8",
                                 "data.workers=0", f"model.backbone={backbone}", "model.patch_size=8",
                                 "train.epochs=1", "train.log_every=1"])
        fit(cfg, root / backbone)
        out[backbone] = root / backbone
    return out


def test_cli_explain_vit_with_cnn_panel(runs, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["explain", str(runs["vit_test"]), "0LCC", "1RMLO", "--out", str(out),
               "--compare", str(runs["cnn_test"])])
    assert rc == 0, capsys.readouterr().err
    for image_id in ("0LCC", "1RMLO"):
        heat = np.load(out / f"{image_id}_rollout.npy")
        assert heat.shape == (SIZE, SIZE) and heat.dtype == np.float32 and 0 <= heat.min() <= heat.max() <= 1
        for name in (f"{image_id}_rollout.png", f"{image_id}_panel.png"):
            with Image.open(out / name) as im:
                assert im.format == "PNG"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files

    rc = main(["explain", str(runs["vit_test"]), "2LCC", "--method", "attention", "--out", str(out),
               "--checkpoint", "last"])
    assert rc == 0
    heads = np.load(out / "2LCC_attention_heads.npy")
    assert heads.shape == (2, 2, SIZE // 8, SIZE // 8)  # (L, H, gh, gw)
    np.testing.assert_allclose(heads.sum((-1, -2)) + _cls_self(runs, "2LCC"), 1.0, atol=1e-5)


def _cls_self(runs: dict, image_id: str) -> np.ndarray:
    """CLS attention to itself per (layer, head): what the patch grid's sum misses from 1."""
    from medvit.commands.explain import load_run
    from medvit.models.inputs import model_input

    run = load_run(str(runs["vit_test"]), "last", torch.device("cpu"))
    full = np.load(runs["vit_test"].parent / "data" / "images" / f"{image_id}.npy").astype(np.float32) / 65535
    return attention_maps(run.model, model_input(full, SIZE)[None])[0, :, :, 0, 0].numpy()


def test_cli_class_mean_maps(runs, tmp_path):
    out = tmp_path / "mean"
    assert main(["explain", str(runs["cnn_test"]), "--class-mean", "--fold", "1", "--out", str(out)]) == 0
    maps = np.load(out / "class_mean_gradcam.npy")
    info = json.loads((out / "class_mean_gradcam.json").read_text())
    frame = pd.read_csv(runs["cnn_test"].parent / "data" / "manifest.csv")
    fold = frame[frame["fold"] == 1]
    assert info["classes"] == [0, 1] and info["counts"] == [int((fold.label == 0).sum()), int((fold.label == 1).sum())]
    assert maps.shape == (2, SIZE, SIZE) and 0 <= maps.min() and maps.max() <= 1
    assert not np.allclose(maps[0], maps[1])
    assert (out / "class_mean_gradcam.png").stat().st_size > 0


def test_cli_explain_cnn_and_errors(runs, tmp_path, capsys):
    out = tmp_path / "cnn"
    assert main(["explain", str(runs["cnn_test"]), "3LMLO", "--out", str(out)]) == 0
    assert (out / "3LMLO_gradcam.png").is_file() and np.load(out / "3LMLO_gradcam.npy").shape == (SIZE, SIZE)
    capsys.readouterr()
    assert main(["explain", str(runs["cnn_test"]), "nope", "3LMLO", "--out", str(out)]) == 1  # goes on
    assert "nope" in capsys.readouterr().err
    assert main(["explain", str(runs["vit_test"]), "0LCC", "--method", "gradcam", "--out", str(out)]) == 2
    assert "is a ViT" in capsys.readouterr().err
    assert main(["explain", str(runs["vit_test"])]) == 2
    assert "--pointing" in capsys.readouterr().err
    assert main(["explain", str(runs["vit_test"]), "0LCC", "--class-mean"]) == 2  # one mode at a time
    assert "got IMAGES and --class-mean" in capsys.readouterr().err
    assert main(["explain", str(runs["vit_test"]), "0LCC", "--tolerance", "0.1"]) == 2
    assert "--tolerance only applies to --pointing" in capsys.readouterr().err
    assert main(["explain", str(runs["vit_test"]), "--pointing", str(tmp_path), "--tolerance", "1.5"]) == 2
    assert "[0, 1)" in capsys.readouterr().err


def test_cli_dicom_input_and_pointing_game(runs, synth_data, tmp_path, capsys):
    synth, data = synth_data
    out = tmp_path / "pt"
    dcm = sorted((synth / "train_images").rglob("*.dcm"))[0]
    assert main(["explain", str(runs["vit_test"]), str(dcm), "--data", str(data), "--out", str(out)]) == 0
    assert (out / f"{dcm.stem}_rollout.png").is_file()
    capsys.readouterr()
    assert main(["explain", str(runs["cnn_test"]), "--pointing", str(synth), "--data", str(data),
                 "--out", str(out)]) == 0
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("pointing game")]
    result = json.loads((out / "pointing_gradcam.json").read_text())
    n_masks = len(list((synth / "lesion_masks").glob("*.png")))
    assert result["n"] + result["skipped"] == n_masks and result["n"] >= 2
    assert 0 <= result["hits_strict"] <= result["hits"] <= result["n"] and result["method"] == "gradcam"
    assert result["tolerance"] == pytest.approx(15 / 224)
    assert line == [f"pointing game (cnn_test, gradcam): {result['hits']}/{result['n']} = {result['score']:.3f} "
                    f"within 0.067 of the side; {result['hits_strict']}/{result['n']} = "
                    f"{result['score_strict']:.3f} inside the lesion"]
    assert sorted(result["image_ids"]) == sorted(p.stem for p in (synth / "lesion_masks").glob("*.png"))
