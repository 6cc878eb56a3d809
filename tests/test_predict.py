"""`medvit predict`: synth DICOMs -> ingest -> tiny run -> predict the raw folder (+ broken files)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from dicom_factory import truncated_copy
from medvit.cli import main
from medvit.config import load_config
from medvit.data.datasets import MammoDataset, read_manifest
from medvit.data.benchmarks import write_cifar10
from medvit.dicom.synth import write_dataset
from medvit.ingest import ingest
from medvit.predict import breast_csv_path, predict_folder
from medvit.train import fit
from medvit.train.checkpoint import build_model_from_checkpoint, load_checkpoint
from medvit.train.steps import predict as steps_predict

INGEST_SIZE = 64  # small, to keep the test fast; predict must pick it up from the run's data
IMAGE_SIZE = 32
BAD = {"notes.txt": "not_dicom", "broken/truncated.dcm": "truncated", "color.dcm": "color"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("predict")
    synth = root / "synth"
    write_dataset(synth, patients=3, seed=3, cancer_rate=0.5, workers=1)
    data = root / "data"
    ingest(synth, data, size=INGEST_SIZE, workers=1, folds=2, progress=False, log=lambda m: None)
    cfg = load_config(None, [
        f"data.dir={data}", f"data.image_size={IMAGE_SIZE}", "data.batch_size=4", "data.workers=0",
        "model.backbone=cnn_test", "train.epochs=1", "train.device=cpu", "data.balanced=false"])
    run = root / "run"
    fit(cfg, run)
    # the folder to predict: the synth DICOMs (one without its .dcm suffix) plus broken files
    inbox = root / "inbox"
    shutil.copytree(synth / "train_images", inbox)
    dicoms = sorted(inbox.rglob("*.dcm"))
    dicoms[0].rename(dicoms[0].with_suffix(""))
    (inbox / "notes.txt").write_text("not a DICOM\n")
    (inbox / "broken").mkdir()
    truncated_copy(dicoms[1], inbox / "broken" / "truncated.dcm", keep=0.5)
    shutil.copy2(get_testdata_file("SC_rgb_rle.dcm"), inbox / "color.dcm")
    phi = {"MEDVITPHI"}
    for path in sorted((synth / "train_images").rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        phi |= {str(ds.get("PatientName", "")), str(ds.get("PatientBirthDate", ""))}  # synth's "rsna" files: neither
        if str(ds.PatientID) == str(ds.get("PatientName", "")):  # synth's "id_is_name" files
            phi |= {str(ds.PatientID), "id_is_name"}
    assert "id_is_name" in phi  # the case is exercised
    phi -= {"", "id_is_name"}
    out = root / "out" / "preds.csv"
    summary = predict_folder(inbox, run, out, workers=0, batch_size=5, device="cpu", progress=False)
    return {"root": root, "data": data, "run": run, "inbox": inbox, "out": out, "summary": summary,
            "phi": phi, "n_dicoms": len(dicoms)}


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"patient_id": str, "image_id": str}, keep_default_na=False)


def test_one_row_per_file_with_status(world):
    pred = read(world["out"])
    files = sorted(p.relative_to(world["inbox"]).as_posix() for p in world["inbox"].rglob("*") if p.is_file())
    assert sorted(pred["path"]) == files and len(files) == world["n_dicoms"] + len(BAD)
    assert list(pred.columns) == ["path", "image_id", "patient_id", "patient_id_source", "modality", "laterality",
                                  "laterality_source", "view", "prob", "pred", "status", "error"]
    bad = pred.set_index("path").loc[list(BAD)]
    assert (bad["status"] == "error").all()
    for rel, reason in BAD.items():
        assert bad.at[rel, "error"].startswith(reason), (rel, bad.at[rel, "error"])
        assert bad.at[rel, "prob"] == ""
    ok = pred[pred["status"] == "ok"]
    assert len(ok) == world["n_dicoms"] and (ok["error"] == "").all()
    assert ok["laterality"].isin(["L", "R"]).all() and ok["view"].isin(["CC", "MLO", ""]).all()
    assert set(ok["modality"]) == {"MG", "(none; DX SOP class)"}  # synth's "rsna" files: no Modality, like RSNA's
    assert (ok["patient_id_source"] == "header_hmac").all() and ok["patient_id"].str.startswith("p-").all()
    assert (ok["laterality_source"] == "header").all()
    assert ok["prob"].astype(float).between(0, 1).all()
    s = world["summary"]
    assert (s["files"], s["ok"], s["error"]) == (len(files), world["n_dicoms"], len(BAD))
    assert not list(world["out"].parent.glob(".*"))  # no temp file left


def test_probabilities_equal_the_training_path(world):
    """No train/serve skew: predict on raw DICOMs == the model on the ingested cache via MammoDataset."""
    assert world["summary"]["canvas"] == f"{INGEST_SIZE}x{INGEST_SIZE}"  # recorded in the checkpoint
    ckpt = load_checkpoint(world["run"] / "checkpoints" / "best.pt")
    model = build_model_from_checkpoint(ckpt)
    frame = read_manifest(world["data"])
    ds = MammoDataset(world["data"], frame[frame["status"] == "ok"], image_size=IMAGE_SIZE)
    loader = torch.utils.data.DataLoader(ds, batch_size=7)
    ids, _, probs, _ = steps_predict(model, loader, torch.device("cpu"), None, True)
    pred = read(world["out"])
    ok = pred[pred["status"] == "ok"].set_index("image_id")
    assert sorted(ok.index) == sorted(ids)
    np.testing.assert_allclose(ok.loc[ids, "prob"].astype(float).to_numpy(), probs, rtol=0, atol=1e-5)
    # the manifest's laterality is what predict reports
    meta = frame.set_index("image_id").loc[ids]
    assert (ok.loc[ids, "laterality"].to_numpy() == meta["laterality"].to_numpy()).all()


def test_same_patient_same_pseudonym_in_ingest_and_predict(world, tmp_path):
    """Issue 11: a header PatientID leaves as one stable, keyed pseudonym, in ingest and predict alike."""
    ingest(world["inbox"], tmp_path / "data", size=INGEST_SIZE, workers=1, progress=False, log=lambda m: None)
    manifest = read_manifest(tmp_path / "data").set_index("image_id")
    ok = read(world["out"]).query("status == 'ok'").set_index("image_id")
    assert (manifest.loc[ok.index, "patient_id"] == ok["patient_id"]).all()
    assert (manifest.loc[ok.index, "patient_id_source"] == "header_hmac").all()
    assert ok["patient_id"].nunique() == 3  # three synth patients
    again = predict_folder(world["inbox"], world["run"], tmp_path / "k.csv", device="cpu", progress=False,
                           id_key="another secret")
    other = read(tmp_path / "k.csv").query("status == 'ok'").set_index("image_id")
    assert again["ok"] == len(ok) and not set(other["patient_id"]) & set(ok["patient_id"])  # another key
    predict_folder(world["inbox"], world["run"], tmp_path / "raw.csv", device="cpu", progress=False,
                   raw_patient_ids=True)
    raw = read(tmp_path / "raw.csv").query("status == 'ok'")
    assert (raw["patient_id_source"] == "header").all() and not raw["patient_id"].str.startswith("p-").any()


def test_threshold_from_checkpoint_and_override(world, tmp_path):
    t = load_checkpoint(world["run"] / "checkpoints" / "best.pt")["threshold"]
    pred = read(world["out"])
    ok = pred[pred["status"] == "ok"]
    prob = ok["prob"].astype(float)
    assert world["summary"]["threshold"] == t
    assert (ok["pred"].astype(int) == (prob >= t).astype(int)).all()
    cut = float(np.median(prob))
    s = predict_folder(world["inbox"], world["run"], tmp_path / "p.csv", threshold=cut, device="cpu", progress=False)
    assert s["threshold"] == cut
    ok2 = read(tmp_path / "p.csv").query("status == 'ok'")
    assert (ok2["pred"].astype(int) == (ok2["prob"].astype(float) >= cut).astype(int)).all()
    assert 0 < ok2["pred"].astype(int).sum() < len(ok2)  # the median splits them


def test_per_breast_csv(world):
    breast = read(breast_csv_path(world["out"]))
    assert list(breast.columns) == ["patient_id", "laterality", "prob_mean", "prob_max", "n_images", "pred"]
    ok = read(world["out"]).query("status == 'ok'").assign(prob=lambda f: f["prob"].astype(float))
    groups = ok.groupby(["patient_id", "laterality"])["prob"]
    assert len(breast) == groups.ngroups == 6 and breast["n_images"].sum() == world["n_dicoms"]
    b = breast.set_index(["patient_id", "laterality"])
    np.testing.assert_allclose(b["prob_mean"].loc[groups.mean().index], groups.mean().to_numpy())
    np.testing.assert_allclose(b["prob_max"].loc[groups.max().index], groups.max().to_numpy())
    t = world["summary"]["threshold"]
    assert (b["pred"] == (b["prob_mean"] >= t).astype(int)).all()


def test_workers_give_identical_csv_and_cli_overlays_carry_no_phi(world, tmp_path, capsys):
    out = tmp_path / "w2.csv"
    rc = main(["predict", str(world["inbox"]), "--checkpoint", str(world["run"]), "--out", str(out),
               "--workers", "2", "--batch-size", "5", "--device", "cpu", "--overlays", str(tmp_path / "ov")])
    assert rc == 0
    assert f"{world['n_dicoms']}/{world['n_dicoms'] + len(BAD)}" in capsys.readouterr().out
    assert out.read_bytes() == world["out"].read_bytes()
    assert breast_csv_path(out).read_bytes() == breast_csv_path(world["out"]).read_bytes()
    ok = read(out).query("status == 'ok'")
    pngs = sorted((tmp_path / "ov").glob("*.png"))
    assert sorted(p.stem for p in pngs) == sorted(ok["image_id"])
    with Image.open(pngs[0]) as im:
        im.verify()
    # PHI scan over every output: CSVs, per-breast CSVs and overlays
    outputs = [world["out"], breast_csv_path(world["out"]), out, breast_csv_path(out), *pngs]
    for path in outputs:
        data = path.read_bytes()
        for value in world["phi"]:
            assert value.encode() not in data, (path, value)


def test_multiclass_checkpoint_does_not_crash(world, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (20, 32, 32, 3)).astype(np.uint8)
    write_cifar10(tmp_path / "cifar", x, np.arange(20) % 10, x[:10], np.arange(10))
    cfg = load_config(None, [
        "data.kind=cifar10", f"data.dir={tmp_path / 'cifar'}", "data.image_size=16", "data.batch_size=10",
        "data.workers=0", "model.backbone=vit_test", "model.patch_size=4", "train.epochs=1", "train.device=cpu"])
    fit(cfg, tmp_path / "run")
    s = predict_folder(world["inbox"], tmp_path / "run" / "checkpoints" / "best.pt", tmp_path / "mc.csv",
                       ingest_size=INGEST_SIZE, device="cpu", progress=False, overlays=tmp_path / "ov")
    assert s["binary"] is False and s["ok"] == world["n_dicoms"] and "per_breast" not in s
    assert s["overlays"] == world["n_dicoms"] == len(list((tmp_path / "ov").glob("*.png")))  # ViT rollout
    ok = read(tmp_path / "mc.csv").query("status == 'ok'")
    assert ok["pred"].astype(int).between(0, 9).all()
    assert ok["prob"].astype(float).between(0.1 - 1e-6, 1).all()  # max of 10 probabilities


def test_bad_arguments(world, tmp_path, capsys):
    assert main(["predict", str(tmp_path / "none"), "--checkpoint", str(world["run"])]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["predict", str(world["inbox"]), "--checkpoint", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["predict", str(world["inbox"]), "--checkpoint", str(world["run"]), "--threshold", "2"]) == 2


def test_failure_midway_leaves_no_csv(world, tmp_path, monkeypatch):
    import medvit.predict as mp

    calls = {"n": 0}
    real = mp.forward_probs

    def flaky(p, images):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("device lost")
        return real(p, images)

    monkeypatch.setattr(mp, "forward_probs", flaky)
    with pytest.raises(RuntimeError):
        predict_folder(world["inbox"], world["run"], tmp_path / "p.csv", batch_size=4, device="cpu", progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the CSV nor its temp file


def test_missing_laterality_from_the_image_and_free_text_dropped(world, tmp_path):
    """No ImageLaterality: the side comes from the image (so the breast is not lost from the
    per-breast table); a ViewPosition holding free text never reaches the CSV."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    every = sorted((world["root"] / "synth" / "train_images").rglob("*.dcm"))
    side = {p: str(pydicom.dcmread(p, stop_before_pixels=True).ImageLaterality) for p in every}
    sources = [next(p for p in every if side[p] == "L"), next(p for p in every if side[p] == "R")]
    truth = []
    for i, path in enumerate(sources):
        ds = pydicom.dcmread(path)
        truth.append(str(ds.ImageLaterality))
        for tag in ("ImageLaterality", "Laterality"):
            if tag in ds:
                delattr(ds, tag)
        ds.ViewPosition = "MEDVITPHI SMITH"
        ds.save_as(inbox / f"n{i}.dcm")
    out = tmp_path / "p.csv"
    predict_folder(inbox, world["run"], out, device="cpu", progress=False)
    pred = read(out)
    assert list(pred["laterality"]) == truth and (pred["laterality_source"] == "content").all()
    assert (pred["view"] == "").all() and b"MEDVITPHI" not in out.read_bytes()
    assert read(breast_csv_path(out))["n_images"].sum() == 2


def test_ingest_size_travels_in_the_checkpoint(world, tmp_path):
    """The training data folder may be gone where predict runs: the canvas is in the checkpoint."""
    from medvit.predict import load_predictor
    from medvit.train.checkpoint import save_checkpoint

    ck = load_checkpoint(world["run"] / "checkpoints" / "best.pt")
    assert ck["canvas"] == f"{INGEST_SIZE}x{INGEST_SIZE}"
    ck["config"]["data"]["dir"] = str(tmp_path / "moved-away")
    moved = save_checkpoint(ck, tmp_path / "moved.pt")
    assert load_predictor(moved, device="cpu").ingest_size == (INGEST_SIZE, INGEST_SIZE)
    del ck["canvas"]
    ck["ingest_size"] = 48  # a checkpoint from before canvases: its side
    assert load_predictor(save_checkpoint(ck, tmp_path / "older.pt"), device="cpu").ingest_size == (48, 48)
    del ck["ingest_size"]  # older still: the data folder, else 512
    assert load_predictor(save_checkpoint(ck, tmp_path / "old.pt"), device="cpu").ingest_size == (512, 512)


def test_not_a_mammogram_is_an_error_row_unless_any_modality(world, tmp_path, capsys):
    """Issue 11: a CT slice was predicted as a mammogram (probability 1.0, no warning)."""
    from dicom_factory import CT_IMAGE, edit_dicom

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    mg = sorted(world["inbox"].rglob("*.dcm"))[0]
    edit_dicom(mg, inbox / "ct.dcm", Modality="CT", SOPClassUID=CT_IMAGE)
    shutil.copy2(mg, inbox / "mg.dcm")
    out = tmp_path / "p.csv"
    assert main(["predict", str(inbox), "--checkpoint", str(world["run"]), "--out", str(out), "--workers", "0",
                 "--device", "cpu"]) == 0
    rows = read(out).set_index("image_id")
    assert rows.at["ct", "status"] == "error" and rows.at["ct", "error"].startswith("not_mammogram")
    assert rows.at["ct", "modality"] == "CT"  # the modality is written on the error row too
    assert rows.at["mg", "status"] == "ok"
    assert main(["predict", str(inbox), "--checkpoint", str(world["run"]), "--out", str(out), "--workers", "0",
                 "--device", "cpu", "--any-modality"]) == 0
    rows = read(out).set_index("image_id")
    assert (rows.at["ct", "status"], rows.at["ct", "modality"]) == ("ok", "CT")


def test_checkpoint_file_of_a_run_without_best_names_what_it_has(world, tmp_path, capsys):
    """Issue 11: `--checkpoint RUN/checkpoints/best.pt` on a run with only last.pt said
    "RUN/checkpoints/best.pt/checkpoints/best.pt: checkpoint not found"."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy2(world["run"] / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    given = run / "checkpoints" / "best.pt"
    assert main(["predict", str(world["inbox"]), "--checkpoint", str(given), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert f"{given}: checkpoint not found" in err and "has last.pt" in err and "best.pt/checkpoints" not in err


def test_file_without_patient_id_gets_the_folder_pseudonym_ingest_gives(world, tmp_path):
    """A header without PatientID: ingest and predict both fall back to the (pseudonymised) folder name."""
    from dicom_factory import edit_dicom

    inbox = tmp_path / "inbox" / "PATIENT-7"
    inbox.mkdir(parents=True)
    edit_dicom(sorted(world["inbox"].rglob("*.dcm"))[0], inbox / "a.dcm", PatientID=None)
    ingest(tmp_path / "inbox", tmp_path / "data", size=INGEST_SIZE, workers=1, progress=False, log=lambda m: None)
    manifest = read_manifest(tmp_path / "data").set_index("image_id")
    predict_folder(tmp_path / "inbox", world["run"], tmp_path / "p.csv", device="cpu", progress=False)
    pred = read(tmp_path / "p.csv").set_index("image_id")
    assert pred.at["a", "patient_id_source"] == manifest.at["a", "patient_id_source"] == "folder_hmac"
    assert pred.at["a", "patient_id"] == manifest.at["a", "patient_id"] != "PATIENT-7"
    assert pred.at["a", "patient_id"].startswith("p-")


def test_rsna_shaped_files_are_predicted_and_other_modalities_refused(world, tmp_path):
    """Issue 14: default `predict` refused every real RSNA file (no Modality, no SOPClassUID,
    DX For Presentation in the file meta). Now they are predicted, and the modality column says
    what decided; a CT slice and an MR SOP class without a Modality are still refused."""
    from dicom_factory import CT_IMAGE, edit_dicom
    from medvit.dicom.synth import RSNA_SOP_CLASS

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rsna = [p for p in sorted(world["inbox"].rglob("*.dcm"))
            if pydicom.dcmread(p, stop_before_pixels=True).file_meta.MediaStorageSOPClassUID == RSNA_SOP_CLASS]
    assert len(rsna) >= 3
    for path in rsna:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert "Modality" not in ds and "SOPClassUID" not in ds and "ViewPosition" not in ds
        shutil.copy2(path, inbox / path.name)
    edit_dicom(rsna[0], inbox / "ct.dcm", Modality="CT", SOPClassUID=CT_IMAGE)
    mr = pydicom.dcmread(rsna[0])
    mr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage, still no Modality
    mr.save_as(inbox / "mr.dcm")
    out = tmp_path / "p.csv"
    assert main(["predict", str(inbox), "--checkpoint", str(world["run"]), "--out", str(out), "--workers", "0",
                 "--device", "cpu"]) == 0
    rows = read(out).set_index("image_id")
    ok = rows.drop(index=["ct", "mr"])
    assert len(ok) == len(rsna) and (ok["status"] == "ok").all()
    assert (ok["modality"] == "(none; DX SOP class)").all() and ok["prob"].astype(float).between(0, 1).all()
    assert (rows.at["ct", "status"], rows.at["ct", "modality"]) == ("error", "CT")
    assert (rows.at["mr", "status"], rows.at["mr", "modality"]) == ("error", "(none; MR SOP class)")
    assert rows.at["mr", "error"].startswith("not_mammogram") and rows.at["ct", "error"].startswith("not_mammogram")
