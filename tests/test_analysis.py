"""`medvit.analysis` and `medvit analyze`: known answers (CKA, attention distance, mu, psi),
ablation edge cases, hooks released and models unchanged, and the CLI outputs."""
from __future__ import annotations

import argparse

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medvit.analysis import ablation as abl
from medvit.analysis.cka import hsic1_matrix, linear_cka, minibatch_cka
from medvit.analysis.common import AnalysisRun, cnn_units, load_analysis_run, output_hooks, score
from medvit.analysis.distance import attention_distance, mean_distance, patch_distances
from medvit.analysis.sparsity import attention_sparsity, layer_mu
from medvit.cli import main
from medvit.config import load_config
from medvit.data.benchmarks import write_mnist
from medvit.explain.attention import (attention_from_input, attention_maps, block_output_from_attention,
                                      qkv_hooks, stream_attention)
from medvit.models import create_backbone

from fake_cache import make_manifest


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------ CKA


def test_cka_known_answers():
    g = _gen()
    x = torch.randn(400, 16, generator=g, dtype=torch.float64) @ torch.randn(16, 40, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-9)  # orthogonal transform
    assert linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=1e-9)  # isotropic scaling
    assert linear_cka(x, x + 3.0) == pytest.approx(1.0, abs=1e-9)  # a mean shift (unbiased HSIC centres)
    stretch = torch.diag(torch.logspace(-2, 2, 40, dtype=torch.float64)) @ torch.randn(40, 40, generator=g,
                                                                                     dtype=torch.float64)
    assert abs(float(torch.linalg.det(stretch))) > 0  # invertible, not orthogonal
    assert linear_cka(x, x @ stretch) < 0.9
    independent = torch.randn(400, 40, generator=g, dtype=torch.float64)
    assert abs(linear_cka(x, independent)) < 0.03
    assert 0.3 < linear_cka(x, torch.tanh(x @ torch.randn(40, 8, generator=g, dtype=torch.float64))) < 0.99


def test_unbiased_hsic_equals_its_u_statistic_by_brute_force():
    """HSIC_1 (Song et al. 2012) is the U-statistic over distinct index tuples; check it term by term."""
    import itertools

    g = _gen(2)
    x, y = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    kx, ly = x @ x.T, (y @ y.T).tanh()  # any symmetric matrices
    n = 7
    t2 = sum(kx[i, j] * ly[i, j] for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    t3 = sum(kx[i, j] * ly[i, q] for i, j, q in itertools.permutations(range(n), 3)) / (n * (n - 1) * (n - 2))
    t4 = sum(kx[i, j] * ly[q, r] for i, j, q, r in itertools.permutations(range(n), 4)) / (
        n * (n - 1) * (n - 2) * (n - 3))
    assert float(hsic1_matrix(kx[None], ly[None])[0, 0]) == pytest.approx(float(t2 + t4 - 2 * t3), rel=1e-9)


def test_minibatch_cka_matches_the_full_estimate():
    g = _gen(1)
    x = torch.randn(600, 12, generator=g)
    y = torch.tanh(x @ torch.randn(12, 20, generator=g)) + 0.5 * torch.randn(600, 20, generator=g)
    full = linear_cka(x, y)
    assert minibatch_cka([(x, y)]) == full  # one minibatch holding everything: the same number
    batched = minibatch_cka([(x[i:i + 60], y[i:i + 60]) for i in range(0, 600, 60)])
    assert batched == pytest.approx(full, abs=0.02) and batched != full
    with pytest.raises(Exception, match="at least 4"):
        hsic1_matrix(torch.eye(3)[None], torch.eye(3)[None])


# --------------------------------------------------------------------- attention distance


def test_uniform_attention_distance_is_its_analytic_value():
    d = patch_distances((2, 2), (4.0, 4.0))  # centres 4 px apart
    uniform = torch.full((3, 5, 5), 0.2)  # CLS + 4 patches, every weight 1/5
    dist, cls_share = mean_distance(uniform, d, prefix=1)
    # each query: 0, 4, 4 and 4·sqrt(2) px, weighted 1/4 each after leaving CLS out
    assert torch.allclose(dist, torch.full((3,), (8 + 4 * math.sqrt(2)) / 4, dtype=torch.float64))
    assert torch.allclose(cls_share, torch.full((3,), 0.2, dtype=torch.float64))
    local = torch.zeros(1, 5, 5)
    local[0, torch.arange(5), torch.arange(5)] = 1.0  # each token attends to itself only
    assert float(mean_distance(local, d)[0]) == 0.0
    assert torch.allclose(patch_distances((1, 3), (2.0, 5.0))[0], torch.tensor([0.0, 5.0, 10.0], dtype=torch.float64))


def test_a_vit_with_zero_queries_and_keys_has_the_uniform_distance():
    model = create_backbone("vit_test", num_classes=3, in_chans=1, img_size=28, patch_size=7).eval()
    with torch.no_grad():
        for blk in model.blocks:  # q = k = 0: every softmax row is uniform
            blk.attn.qkv.weight[:64].zero_()
            blk.attn.qkv.bias[:64].zero_()

    class Images(torch.utils.data.Dataset):
        labels, ids = np.zeros(5, dtype=np.int64), [str(i) for i in range(5)]

        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.rand(1, 28, 28), 0

    run = AnalysisRun(model, "vit_test", "vit", False, Images(), Path("."), Path("."), torch.device("cpu"), {})
    r = attention_distance(run, batch_size=2)
    analytic = float(patch_distances((4, 4), (7.0, 7.0)).mean())  # mean centre distance over all patch pairs
    assert np.allclose(r["distance"], analytic) and r["distance"].shape == (2, 2)
    assert r["uniform_distance"] == pytest.approx(analytic) and np.allclose(r["cls_share"], 1 / 17)


# -------------------------------------------------------------------------- tiny runs


def _digits(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 'digits': class c lights a bar at row 4 + 4c (learnable in a few steps)."""
    labels = np.arange(n) % 4
    images = (rng.random((n, 28, 28)) * 40).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, 3 + 5 * c: 7 + 5 * c, 4:24] = 230
    return images, labels


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    from medvit.train import fit

    root = tmp_path_factory.mktemp("analysis")
    rng = np.random.default_rng(0)
    write_mnist(root / "mnist", *_digits(96, rng), *_digits(40, rng))
    out = {}
    for backbone, extra in (("vit_test", ["model.patch_size=7", "optim.lr=3e-3"]), ("cnn_test", ["optim.lr=1e-2"])):
        cfg = load_config(None, [f"data.dir={root / 'mnist'}", "data.kind=mnist", "data.batch_size=16",
                                 "data.workers=0", f"model.backbone={backbone}", "train.epochs=5",
                                 "schedule.warmup_epochs=0", "train.device=cpu", "train.monitor=val_accuracy",
                                 *extra])
        fit(cfg, root / backbone)
        out[backbone] = root / backbone
    return out


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(getattr(m, t)) for m in model.modules()
               for t in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"))


def test_every_analysis_leaves_the_model_as_it_was(runs):
    from medvit.analysis.attention_maps import class_attention
    from medvit.analysis.cka import layer_cka

    for backbone, analyses in (("vit_test", [class_attention, layer_cka, attention_distance, attention_sparsity,
                                             lambda r: abl.ablation(r, (0.1,), (1,), 1)]),
                               ("cnn_test", [layer_cka, lambda r: abl.ablation(r, (0.1,), (1,), 1)])):
        run = load_analysis_run(runs[backbone], limit=12, device="cpu")
        model = run.model
        model.train()  # the analyses switch to eval inside and must restore this
        x = torch.stack([run.dataset[i][0] for i in range(4)])
        with torch.no_grad():
            before = model.eval()(x)
        model.train()
        fused = [b.attn.fused_attn for b in model.blocks] if backbone == "vit_test" else []
        for analyse in analyses:
            analyse(run)
            assert model.training and _hooks(model) == 0, (backbone, analyse)
            if fused:
                assert [b.attn.fused_attn for b in model.blocks] == fused
            with torch.no_grad():
                assert torch.equal(model.eval()(x), before), (backbone, analyse)
            model.train()


def test_hooks_released_when_the_forward_raises():
    model = create_backbone("vit_test", num_classes=3, in_chans=1, img_size=28, patch_size=7)

    def boom(i, attn, qkv):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        stream_attention(model, torch.rand(2, 1, 28, 28), boom)
    assert _hooks(model) == 0


def test_the_shared_context_managers_restore_flags_and_always_release_hooks():
    from medvit.models.hooks import eval_no_grad, forward_hooks

    model = create_backbone("cnn_test", num_classes=3, in_chans=1, img_size=16).train()
    model.stage1[1].eval()  # a frozen BatchNorm inside a training model: must stay frozen
    flags = [m.training for m in model.modules()]
    seen = []
    with eval_no_grad(model), forward_hooks([(model.stage2, lambda m, a, out: seen.append(out.shape))]):
        assert not any(m.training for m in model.modules()) and not torch.is_grad_enabled()
        model(torch.rand(2, 1, 16, 16))
    assert [m.training for m in model.modules()] == flags and seen == [torch.Size([2, 16, 4, 4])]
    with eval_no_grad(model, grad=True):
        assert torch.is_grad_enabled() and not model.training
    with pytest.raises(RuntimeError, match="boom"), eval_no_grad(model), \
            forward_hooks([(model.stage1, lambda m, a, out: 1 / 0), (model.stage3, lambda m, a, out: None)]):
        raise RuntimeError("boom")
    assert _hooks(model) == 0 and [m.training for m in model.modules()] == flags
    with pytest.raises(KeyError), output_hooks(model, ["stage1", "no_such_layer"], lambda n, out: None):
        pass  # a bad name fails on entry and leaves no hook behind
    assert _hooks(model) == 0


# --------------------------------------------------------------------------- sparsity


def test_mu_is_the_column_mean_and_sums_to_one_per_layer():
    torch.manual_seed(0)
    model = create_backbone("vit_test", num_classes=3, in_chans=1, img_size=28, patch_size=7).eval()
    x = torch.rand(3, 1, 28, 28)
    mus = {}
    stream_attention(model, x, lambda i, attn, qkv: mus.__setitem__(i, layer_mu(attn, qkv)))
    full = attention_maps(model, x)  # (B, L, H, N, N)
    for i, mu in mus.items():
        expected = full[:, i].mean(dim=(1, 2))  # 1/(HN) sum_h sum_i A_{l,h,ij}
        assert torch.allclose(mu, expected, atol=1e-6)
        assert torch.allclose(mu.sum(-1), torch.ones(3), atol=1e-5)  # over all N columns, CLS included


def test_sparsity_on_a_run(runs):
    run = load_analysis_run(runs["vit_test"], limit=16, device="cpu")
    r = attention_sparsity(run, batch_size=5)
    assert r["mu_sum_max_error"] < 1e-5 and r["images"] == 16
    assert np.allclose(r["mu_mean"].sum(1), 1.0, atol=1e-5)
    assert np.allclose(r["top_prob"].reshape(r["layers"], -1).sum(1), 1.0)  # a distribution over patches
    assert r["top_k"] == 1 and r["grid"] == [4, 4]  # 5% of 16 patches, at least one
    assert r["nu_hist"].sum() == 16 * 16 * r["layers"]  # every image's patch columns, CLS left out
    for corr in r["head_corr"]:
        assert np.allclose(np.diag(corr), 1.0)
    assert np.allclose(np.diag(r["layer_corr"]), 1.0)


# --------------------------------------------------------------------------- ablation


def test_p_is_read_in_percent():
    from medvit.commands.analyze import _shares

    assert _shares("1,5,30") == [0.01, 0.05, 0.3]  # "1" is 1 %, not every unit
    with pytest.raises(argparse.ArgumentTypeError):
        _shares("5,150")


def test_psi_and_drop_masks_on_a_toy_case():
    assert abl.psi(0.9, 0.5, 0.8) == pytest.approx(4.0)
    assert abl.psi(0.9, 0.9, 0.7) == 0.0
    assert math.isnan(abl.psi(0.8, 0.5, 0.8))
    assert [abl.n_drop(p, 10) for p in (0, 0.05, 0.1, 0.3, 1.0)] == [0, 1, 1, 3, 10]
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.7], [5.0, 1.0, 2.0, 0.0]])
    assert abl.drop_mask(scores, 2, "top").tolist() == [[False, True, False, True], [True, False, True, False]]
    rand = abl.drop_mask(scores, 3, "random", _gen(0))
    assert rand.sum(1).tolist() == [3, 3]


def test_zeroing_values_equals_dropping_attention_columns():
    torch.manual_seed(1)
    model = create_backbone("vit_test", num_classes=3, in_chans=1, img_size=28, patch_size=7).eval()
    attn = model.blocks[0].attn
    x = torch.randn(2, 17, 32)
    drop = torch.zeros(2, 17, dtype=torch.bool)
    drop[0, [3, 9]] = True
    drop[1, [1]] = True
    weights = attention_from_input(attn, x).masked_fill(drop[:, None, None, :], 0.0)  # columns set to 0
    expected = block_output_from_attention(attn, x, weights)

    def zero_v(i, a, qkv):
        out = qkv.clone()
        out[..., 64:] *= (~drop).float()[..., None]
        return out

    with qkv_hooks(model, zero_v, [0]), torch.no_grad():
        got = attn(x)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("backbone", ["vit_test", "cnn_test"])
def test_ablating_no_units_changes_nothing_and_all_units_changes_the_outputs(runs, backbone):
    run = load_analysis_run(runs[backbone], limit=20, device="cpu")
    units = abl.units_of(run)
    x = torch.stack([run.dataset[i][0] for i in range(6)])
    last = units.layers[-2:]
    clean, scores = units.clean(x, last)
    none = {i: abl.drop_mask(scores[i], 0, "top") for i in last}
    every = {i: abl.drop_mask(scores[i], units.units[i], "top") for i in last}
    assert torch.equal(units.ablated(x, none), clean)
    assert not torch.allclose(units.ablated(x, every), clean, atol=1e-4)
    r = abl.ablation(run, (0.0, 1.0), (1, 2, 3), seeds=3, batch_size=8)
    rows = {(x["p"], x["n"]): x for x in r["rows"]}
    assert r["metric"] == "accuracy"
    if backbone == "vit_test":  # two blocks: n=3 cannot be run
        assert r["n_values"] == [1, 2] and "n=3 skipped" in r["notes"][0]
    else:
        assert r["n_values"] == [1, 2, 3] and r["units_per_layer"] == [8, 16, 32]
    assert rows[(0.0, 1)]["At"] == r["A0"] and rows[(0.0, 2)]["Ar"] == r["A0"]  # p=0: unchanged
    assert math.isnan(rows[(0.0, 1)]["psi"])
    assert r["A0"] > 0.5  # the bars are learnt ...
    assert rows[(1.0, 2)]["At"] < r["A0"] - 0.2  # ... and dropping every unit of the last two layers hurts
    assert rows[(1.0, 2)]["At"] == rows[(1.0, 2)]["Ar"]  # all units: top and random drop the same set


def test_binary_models_are_scored_by_auc():
    from medvit.metrics import rank_auc

    logits = torch.tensor([[0.1], [2.0], [-1.0], [0.5], [0.0]])
    labels = torch.tensor([0, 1, 0, 1, -1])  # the unlabelled one is left out
    assert score(logits, labels, binary=True) == rank_auc([0, 1, 0, 1], [0.1, 2.0, -1.0, 0.5]) == 1.0
    assert score(torch.eye(3) * 5, torch.tensor([0, 1, 0]), binary=False) == pytest.approx(2 / 3)


def test_cnn_units_come_from_the_model():
    model = create_backbone("cnn_test", num_classes=3, in_chans=1, img_size=32)
    assert cnn_units(model, torch.rand(1, 1, 32, 32)) == ["stage1.2", "stage2.2", "stage3.2"]  # the ReLUs
    seed = create_backbone("basic_cnn", num_classes=10, in_chans=1, img_size=28, width=4)
    assert cnn_units(seed, torch.rand(1, 1, 28, 28)) == ["features.1", "features.4", "features.7"]  # 4-D only
    assert _hooks(seed) == 0


# -------------------------------------------------------------------------------- CLI


def _png(path: Path) -> None:
    with Image.open(path) as im:
        im.verify()
        assert im.format == "PNG" and im.size[0] > 200


def test_cli_writes_every_analysis(runs, capsys):
    vit, cnn = runs["vit_test"], runs["cnn_test"]
    expected = {"attention": ["class_mean.png", "instance.png", "mean_image.png", "class_mean.npy"],
                "cka": ["cka.png", "cka.npy"], "distance": ["distance.png", "distance.npy"],
                "sparsity": ["nu_hist.png", "top5_map.png", "correlations.png", "mu_mean.npy"],
                "ablation": ["ablation.png", "table.md", "psi.npy"]}
    for kind, files in expected.items():
        assert main(["analyze", str(vit), kind, "--limit", "16", "--batch-size", "8", "--seeds", "1",
                     "--device", "cpu"]) == 0, capsys.readouterr().err
        out = vit / "analysis" / kind
        result = json.loads((out / "result.json").read_text())
        assert result["kind"] == kind and result["backbone"] == "vit_test" and result["data"]["n"] == 16
        for name in files:
            assert (out / name).is_file(), (kind, name)
            if name.endswith(".png"):
                _png(out / name)
    cka = json.loads((vit / "analysis" / "cka" / "result.json").read_text())
    assert cka["layers"] == ["blocks.0", "blocks.1"] and np.allclose(np.diag(cka["cka"]), 1.0)
    ablation = json.loads((vit / "analysis" / "ablation" / "result.json").read_text())
    assert {"A0", "rows", "metric"} <= set(ablation) and {"At", "Ar", "psi", "p", "n"} <= set(ablation["rows"][0])
    assert "| n |" in (vit / "analysis" / "ablation" / "table.md").read_text()

    assert main(["analyze", str(vit), "cka", "--other", str(cnn), "--limit", "16", "--batch-size", "8"]) == 0
    cross = json.loads((vit / "analysis" / "cka_vs_cnn_test" / "result.json").read_text())
    assert np.asarray(cross["cka"]).shape == (2, 3) and cross["other_layers"] == ["stage1.2", "stage2.2", "stage3.2"]
    assert main(["analyze", str(cnn), "ablation", "--other", str(vit), "--limit", "16", "--p", "10,30",
                 "--n", "1", "--seeds", "1"]) == 0
    both = json.loads((cnn / "analysis" / "ablation" / "result.json").read_text())
    assert both["unit"] == "channels" and both["other"]["unit"].startswith("attention")
    assert [x["p"] for x in both["rows"]] == [0.1, 0.3]
    capsys.readouterr()
    assert main(["analyze", str(cnn), "sparsity"]) == 2
    assert "needs a ViT" in capsys.readouterr().err


def test_cli_binary_mammography_ablation_reports_auc(tmp_path, capsys):
    from medvit.train import fit

    data = make_manifest(tmp_path / "data", 32, n_patients=6, blob=5)
    cfg = load_config(None, [f"data.dir={data}", "data.image_size=32", "data.batch_size=8", "data.workers=0",
                             "model.backbone=cnn_test", "train.epochs=1", "train.device=cpu"])
    fit(cfg, tmp_path / "run")
    assert main(["analyze", str(tmp_path / "run"), "ablation", "--p", "50", "--n", "1", "--seeds", "1"]) == 0
    printed = capsys.readouterr().out
    assert "auc (A0 =" in printed and "AUCs, not accuracies" in printed
    result = json.loads((tmp_path / "run" / "analysis" / "ablation" / "result.json").read_text())
    assert result["metric"] == "auc" and result["data"]["fold"] == 0
    assert result["data"]["split"] == "validation (optimistic)"


# ------------------------------------------------------- benchmark-format runs (CIFAR-10, MNIST)
# The seeds' analyses run on CIFAR-10 and MNIST, whose datasets fetch whole batches by index
# (`ArrayDataset.__getitems__`); every kind must read them through the trainer's data path.

BENCH_TEST = 24  # test images per format: every analysis reads all of them (no --limit)


@pytest.fixture(scope="module")
def bench_runs(tmp_path_factory) -> dict[str, Path]:
    """One short `medvit train` of a tiny ViT per format, on files written here."""
    from medvit.data.benchmarks import write_cifar10

    from fake_cache import cifar_bars

    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(3)
    write_cifar10(root / "cifar10", *cifar_bars(rng, 60), *cifar_bars(rng, BENCH_TEST))
    write_mnist(root / "mnist", *_digits(60, rng), *_digits(BENCH_TEST, rng))
    out = {}
    for kind, patch in (("cifar10", 8), ("mnist", 7)):
        assert main(["train", "--backbone", "vit_test", f"data.kind={kind}", f"data.dir={root / kind}",
                     "data.train_size=40", "data.batch_size=16", "data.workers=0", f"model.patch_size={patch}",
                     "train.device=cpu", "--epochs", "1", "--out", str(root / f"run_{kind}")]) == 0
        out[kind] = root / f"run_{kind}"
    return out


@pytest.mark.parametrize("fmt", ["cifar10", "mnist"])
def test_every_analysis_runs_on_a_benchmark_run(bench_runs, fmt, capsys):
    run = bench_runs[fmt]
    chans, grid, layers = (3, [4, 4], 2) if fmt == "cifar10" else (1, [4, 4], 2)

    def analyze(kind: str, *extra: str) -> dict:
        assert main(["analyze", str(run), kind, "--batch-size", "10", "--seeds", "1", "--device", "cpu",
                     *extra]) == 0, capsys.readouterr().err
        folder = "cka_vs_" + run.name if "--other" in extra and kind == "cka" else kind
        result = json.loads((run / "analysis" / folder / "result.json").read_text())
        assert result["kind"] == kind and result["backbone"] == "vit_test"
        assert result["data"]["n"] == BENCH_TEST and "test" in result["data"]["split"]  # the whole test split
        return result

    att = analyze("attention")
    assert att["grid"] == grid and att["layers"] == layers and sum(att["counts"]) == BENCH_TEST
    maps = np.load(run / "analysis" / "attention" / "class_mean.npy")
    assert maps.shape == (len(att["classes"]), layers, att["heads"], *grid)
    assert np.all((maps.sum((-2, -1)) > 0) & (maps.sum((-2, -1)) < 1))  # CLS column left out of each row
    cka = analyze("cka")
    assert cka["layers"] == ["blocks.0", "blocks.1"] and np.allclose(np.diag(cka["cka"]), 1.0)
    cross = analyze("cka", "--other", str(run))  # the same model on the same batches: CKA(x, x) = 1
    assert np.asarray(cross["cka"]).shape == (2, 2) and np.allclose(cross["cka"], cka["cka"])
    dist = analyze("distance")
    assert np.asarray(dist["distance"]).shape == (layers, 2) and dist["image_pixels"] == [32 if fmt == "cifar10"
                                                                                         else 28] * 2
    assert 0 < np.max(dist["distance"]) < np.hypot(*dist["image_pixels"])
    sparse = analyze("sparsity")
    assert sparse["mu_sum_max_error"] < 1e-5 and sparse["images"] == BENCH_TEST and sparse["grid"] == grid
    abl_r = analyze("ablation", "--p", "50", "--n", "1")
    assert abl_r["metric"] == "accuracy" and [r["p"] for r in abl_r["rows"]] == [0.5]
    assert 0.0 <= abl_r["A0"] <= 1.0
    ckpt = torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    assert ckpt["model"]["patch_embed.proj.weight"].shape[1] == chans  # the format's own channels reached the model
