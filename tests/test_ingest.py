"""medvit.ingest: manifest + cache from a DICOM folder; resume, kill -9, bad input, no PHI."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medvit.cli import main
from medvit.privacy import patient_ids
from medvit.dicom import synth
from medvit.ingest import (
    DEFAULT_DATA_DIR,
    JOURNAL_NAME,
    assign_folds,
    assign_image_ids,
    ingest,
    read_journal,
)

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def read_manifest(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def dicoms(root: Path) -> list[Path]:
    return sorted(root.rglob("*.dcm"))


def no_temp_files(out: Path) -> bool:
    return not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def rsna(tmp_path_factory) -> Path:
    """4 patients (16 images) in the RSNA layout; read-only for the tests."""
    root = tmp_path_factory.mktemp("rsna")
    synth.write_dataset(root, patients=4, seed=7, cancer_rate=0.5, size="small", workers=2)
    return root


@pytest.fixture()
def rsna_copy(rsna, tmp_path) -> Path:
    dst = tmp_path / "src"
    shutil.copytree(rsna, dst)  # copy2: same mtimes
    return dst


# ----------------------------------------------------------------------------- RSNA layout

def test_rsna_ingest_via_cli(rsna, tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["ingest", str(rsna), "--out", str(out), "--size", "128", "--workers", "2",
                 "--folds", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "ok 16" in printed and "error 0" in printed

    rows = read_manifest(out)
    files = dicoms(rsna / "train_images")
    assert len(rows) == len(files) == 16
    assert [r["path"] for r in rows] == sorted(str(p.relative_to(rsna).as_posix()) for p in files)
    labels = {r["image_id"]: r for r in csv.DictReader(open(rsna / "train.csv"))}
    for r in rows:
        assert r["status"] == "ok" and r["error"] == ""
        truth = labels[r["image_id"]]
        assert (r["label"], r["patient_id"], r["laterality"], r["view"]) == (
            truth["cancer"], truth["patient_id"], truth["laterality"], truth["view"])
        image = np.load(out / r["cache"])
        assert image.shape == (128, 128) and image.dtype == np.uint16
        assert image.max() > 0
        assert r["settings"].startswith("size=128x128;") and r["canvas"] == "128x128"
        assert int(r["rows"]) > 0 and r["transfer_syntax"] in synth.SYNTAXES
    # Folds: every patient in exactly one fold; both folds hold both classes (stratified).
    folds_of = {}
    for r in rows:
        folds_of.setdefault(r["patient_id"], set()).add(r["fold"])
    assert all(len(f) == 1 for f in folds_of.values())
    assert {r["fold"] for r in rows} == {"0", "1"}
    for fold in ("0", "1"):
        assert {r["label"] for r in rows if r["fold"] == fold} == {"0", "1"}
    record = json.loads((out / "ingest.json").read_text())
    assert record["canvas"] == record["settings"]["canvas"] == "128x128"
    summary = record["summary"]
    assert summary["ok"] == 16 and summary["labels_without_file"] == 0
    assert summary["files_without_label"] == 0
    assert (out / "missing_files.csv").read_text().strip() == "image_id,patient_id"
    assert no_temp_files(out)


def test_default_out_dir_and_512(rsna, tmp_path, monkeypatch):
    """No --out: ./medvit-data, where `medvit train` looks; full 512x512 images."""
    src = tmp_path / "one"
    shutil.copytree(rsna / "train_images", src / "train_images",
                    ignore=lambda d, names: names[2:] if d.endswith("train_images") else [])
    monkeypatch.chdir(src)  # `medvit ingest .`: the output folder lies inside SRC
    assert main(["ingest", ".", "--workers", "1", "--no-progress"]) == 0
    assert main(["ingest", ".", "--workers", "1", "--no-progress"]) == 0
    rows = read_manifest(src / DEFAULT_DATA_DIR)
    assert len(rows) == 8 and all(r["path"].startswith("train_images/") for r in rows)
    for r in rows:
        image = np.load(src / DEFAULT_DATA_DIR / r["cache"])
        assert image.shape == (512, 512) and image.dtype == np.uint16


def test_tree_without_suffix_or_labels(rsna, tmp_path):
    src = tmp_path / "tree"
    picked = dicoms(rsna / "train_images")[:3]
    for i, path in enumerate(picked):
        dst = src / f"study{i}" / "series" / f"1.2.840.99.{i}"  # UID-like name, no .dcm
        dst.parent.mkdir(parents=True)
        shutil.copy2(path, dst)
    (src / ".DS_Store").write_text("hidden: skipped")
    out = tmp_path / "data"
    summary = ingest(src, out, size=64, workers=1, progress=False)
    rows = read_manifest(out)
    assert [r["image_id"] for r in rows] == ["1.2.840.99.0", "1.2.840.99.1", "1.2.840.99.2"]
    assert summary["ok"] == 3 and "labelled" not in summary
    ids = patient_ids()  # the key under the tests' XDG_CONFIG_HOME
    for r, path in zip(rows, picked):
        assert r["status"] == "ok" and r["label"] == "" and r["fold"] == "-1"
        header_id = str(pydicom.dcmread(path, stop_before_pixels=True).PatientID)
        # no labels CSV: the header's PatientID leaves only as its keyed pseudonym (issue 11)
        assert (r["patient_id"], r["patient_id_source"]) == ids.pseudonym(header_id)
        assert r["patient_id"].startswith("p-") and header_id not in r["patient_id"]
    assert not (out / "missing_files.csv").exists()
    # the explicit opt-in keeps the raw IDs (and redoes the files: the journal's ID mode changed)
    summary = ingest(src, out, size=64, workers=1, progress=False, raw_patient_ids=True)
    assert summary["processed"] == 3
    rows = read_manifest(out)
    assert [(r["patient_id"], r["patient_id_source"]) for r in rows] == [
        (str(pydicom.dcmread(p, stop_before_pixels=True).PatientID), "header") for p in picked]


def test_awkward_names_labels_path_and_zero_filled_files(rsna, tmp_path):
    """A file name that is not UTF-8, an absolute --labels path to SRC/train.csv (still the RSNA
    layout: lesion masks are not inputs) and a big zero-filled file (not DICOM, said quickly)."""
    src = tmp_path / "src"
    shutil.copytree(rsna, src)
    first = dicoms(src / "train_images")[0]
    odd = os.fsencode(first.parent) + b"/\xffodd.dcm"
    shutil.copy2(first, odd)
    (src / "train_images" / "zeros.dcm").write_bytes(bytes(8_000_000))
    (src / "lesion_masks").mkdir(exist_ok=True)
    (src / "lesion_masks" / "mask.png").write_bytes(b"\x89PNG")
    out = tmp_path / "data"
    started = time.perf_counter()
    summary = ingest(src, out, labels=(src / "train.csv").resolve(), size=32, workers=1, progress=False)
    assert time.perf_counter() - started < 60  # a forced parse of the zeros alone took seconds per MB
    rows = {r["path"]: r for r in read_manifest(out)}
    assert len(rows) == 18 and all(p.startswith("train_images/") for p in rows)  # masks not walked
    assert rows["train_images/zeros.dcm"]["reason"] == "not_dicom"
    odd_row = next(r for p, r in rows.items() if "odd" in p)
    assert odd_row["status"] == "ok" and "\\xff" in odd_row["path"]
    assert odd_row["image_id"].startswith("file-") and (out / odd_row["cache"]).is_file()
    assert summary["ok"] == 17
    again = ingest(src, out, labels=(src / "train.csv").resolve(), size=32, workers=1, progress=False)
    assert again["skipped"] == 18


def test_colliding_stems_get_distinct_deterministic_ids():
    rels = ["a/x.dcm", "b/x.dcm", "c/y", "c/z.DCM"]
    ids = assign_image_ids(rels)
    assert ids["c/y"] == "y" and ids["c/z.DCM"] == "z"
    assert ids["a/x.dcm"] != ids["b/x.dcm"] and ids["a/x.dcm"].startswith("x-")
    assert assign_image_ids(list(reversed(rels))) == ids


# ----------------------------------------------------------------------------- bad input

def _bad_tree(rsna: Path, root: Path) -> dict[str, str]:
    """Two good files plus one of each kind of bad input; returns name -> expected reason."""
    good = dicoms(rsna / "train_images")[:2]
    root.mkdir()
    for p in good:
        shutil.copy2(p, root / p.name)
    (root / "notes.txt").write_text("not a DICOM file\n")
    shutil.copy2(PYDICOM_FILES / "dicomdirtests" / "DICOMDIR", root / "DICOMDIR")
    shutil.copy2(PYDICOM_FILES / "rtplan.dcm", root / "rtplan.dcm")
    shutil.copy2(PYDICOM_FILES / "examples_rgb_color.dcm", root / "color.dcm")
    shutil.copy2(PYDICOM_FILES / "rtdose.dcm", root / "multiframe.dcm")  # 15 grey frames
    data = good[0].read_bytes()
    (root / "truncated.dcm").write_bytes(data[: len(data) // 2])
    ds = pydicom.dcmread(good[0])
    ds.Rows, ds.Columns = 60000, 60000
    ds.save_as(root / "huge.dcm")
    return {"notes.txt": "not_dicom", "DICOMDIR": "no_pixel_data", "rtplan.dcm": "no_pixel_data",
            "color.dcm": "color", "multiframe.dcm": "multi_frame", "truncated.dcm": "truncated",
            "huge.dcm": "bad_dimensions"}


def test_bad_inputs_become_error_rows(rsna, tmp_path):
    expected = _bad_tree(rsna, tmp_path / "bad")
    out = tmp_path / "data"
    summary = ingest(tmp_path / "bad", out, size=64, workers=1, progress=False)
    rows = {r["path"]: r for r in read_manifest(out)}
    assert len(rows) == len(expected) + 2
    got = {name: rows[name]["reason"] for name in expected}
    assert got == expected
    for name in expected:
        assert rows[name]["status"] == "error" and rows[name]["cache"] == ""
        assert rows[name]["error"].startswith(expected[name])
    assert sum(r["status"] == "ok" for r in rows.values()) == 2
    assert summary["ok"] == 2 and summary["error"] == len(expected)
    assert sum(summary["errors_by_reason"].values()) == len(expected)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        r["cache"].split("/")[-1] for r in rows.values() if r["status"] == "ok")
    # Unchanged files whose decoding failed are not retried: same bytes, same failure.
    again = ingest(tmp_path / "bad", out, size=64, workers=1, progress=False)
    assert again["skipped"] == len(rows) and again["errors_by_reason"] == summary["errors_by_reason"]


def crash_on_marked(path: str, size: int, *, any_modality: bool = False):
    """Test preprocess: kills its worker process on files named crash*, else the real one."""
    if Path(path).name.startswith("crash"):
        os._exit(3)
    from medvit.dicom.normalize import preprocess

    return preprocess(path, size=size, any_modality=any_modality)


def test_worker_crash_is_isolated_to_its_file(rsna, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    good = dicoms(rsna / "train_images")[:4]
    for p in good:
        shutil.copy2(p, src / p.name)
    shutil.copy2(good[0], src / "crash.dcm")
    out = tmp_path / "data"
    summary = ingest(src, out, size=32, workers=2, progress=False, preprocess=crash_on_marked)
    rows = {r["path"]: r for r in read_manifest(out)}
    assert rows["crash.dcm"]["reason"] == "worker_crash"
    assert all(r["status"] == "ok" for name, r in rows.items() if name != "crash.dcm")
    assert summary["errors_by_reason"] == {"worker_crash": 1}
    # worker_crash may be transient (memory): a rerun retries just that file.
    again = ingest(src, out, size=32, workers=2, progress=False)
    assert again["processed"] == 1 and again["skipped"] == 4 and again["ok"] == 5


def test_label_rows_without_files_and_files_without_labels(rsna_copy, tmp_path, capsys):
    files = dicoms(rsna_copy / "train_images")
    gone = files[0]
    gone.unlink()
    extra = files[1].parent / "123.dcm"
    shutil.copy2(files[1], extra)
    out = tmp_path / "data"
    assert main(["ingest", str(rsna_copy), "--out", str(out), "--size", "32", "--workers", "1",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "ingest.json").read_text())["summary"]
    assert summary["labels_without_file"] == 1 and summary["labels_without_file_examples"] == [gone.stem]
    assert summary["files_without_label"] == 1 and summary["files_without_label_examples"] == ["123"]
    assert gone.stem in printed and "123" in printed
    missing = list(csv.DictReader(open(out / "missing_files.csv")))
    assert missing == [{"image_id": gone.stem, "patient_id": gone.parent.name}]
    rows = {r["image_id"]: r for r in read_manifest(out)}
    assert rows["123"]["label"] == "" and rows["123"]["fold"] == "-1" and rows["123"]["status"] == "ok"
    header_id = str(pydicom.dcmread(extra, stop_before_pixels=True).PatientID)
    assert (rows["123"]["patient_id"], rows["123"]["patient_id_source"]) == patient_ids().pseudonym(header_id)


def test_unknown_label_column_names_the_file(rsna, tmp_path, capsys):
    assert main(["ingest", str(rsna), "--out", str(tmp_path / "d"), "--label-column", "cancr"]) == 2
    err = capsys.readouterr().err
    assert "train.csv" in err and "cancer" in err


# ----------------------------------------------------------------------------- folds

def _rows(patients: list[str], labels: list[str]) -> list[dict]:
    return [{"status": "ok", "label": y, "patient_id": p, "fold": "-1"} for p, y in zip(patients, labels)]


def test_folds_fall_back_without_crashing():
    msgs: list[str] = []
    rows = _rows(["a", "a", "b", "c"], ["0", "0", "0", "0"])  # one class, 3 patients < 4 folds
    info = assign_folds(rows, 4, 0, msgs.append)
    assert info == {"folds": 3, "method": "GroupKFold"} and len(msgs) == 2
    assert rows[0]["fold"] == rows[1]["fold"] and len({r["fold"] for r in rows}) == 3
    one = _rows(["a", "a"], ["0", "1"])
    assert assign_folds(one, 4, 0, msgs.append)["folds"] == 1 and {r["fold"] for r in one} == {"0"}


def test_folds_grouped_stratified_deterministic():
    patients = [f"p{i // 2}" for i in range(40)]
    labels = ["1" if i // 2 % 4 == 0 else "0" for i in range(40)]
    a, b = _rows(patients, labels), _rows(patients, labels)
    assign_folds(a, 4, 0, print)
    assign_folds(b, 4, 0, print)
    assert [r["fold"] for r in a] == [r["fold"] for r in b]
    for fold in "0123":
        assert {r["label"] for r in a if r["fold"] == fold} == {"0", "1"}
    by_patient = {}
    for r in a:
        by_patient.setdefault(r["patient_id"], set()).add(r["fold"])
    assert all(len(f) == 1 for f in by_patient.values())


# ----------------------------------------------------------------------------- resume

def _npy_mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("*.npy")}


def test_resume_skips_done_and_redoes_changed(rsna_copy, tmp_path):
    out = tmp_path / "data"
    first = ingest(rsna_copy, out, size=32, workers=1, progress=False)
    assert first["processed"] == 16
    manifest = (out / "manifest.csv").read_bytes()
    mtimes = _npy_mtimes(out)

    again = ingest(rsna_copy, out, size=32, workers=1, progress=False)
    assert again["skipped"] == 16 and again["processed"] == 0
    assert _npy_mtimes(out) == mtimes and (out / "manifest.csv").read_bytes() == manifest

    changed = dicoms(rsna_copy / "train_images")[3]
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    deleted = out / "images" / f"{dicoms(rsna_copy / 'train_images')[5].stem}.npy"
    deleted.unlink()
    with open(out / JOURNAL_NAME, "a") as f:  # a line torn by a kill mid-write
        f.write('{"path": "train_images/torn.dcm", "sta')
    third = ingest(rsna_copy, out, size=32, workers=1, progress=False)
    assert third["processed"] == 2 and deleted.exists()
    now = _npy_mtimes(out)
    assert sorted(n for n in mtimes if now[n] != mtimes[n]) == sorted([f"{changed.stem}.npy", deleted.name])

    fourth = ingest(rsna_copy, out, size=48, workers=1, progress=False)
    assert fourth["processed"] == 16
    assert np.load(out / "images" / f"{changed.stem}.npy").shape == (48, 48)
    assert len(read_journal(out / JOURNAL_NAME)) == 16


def test_journal_survives_a_torn_last_line(tmp_path):
    from medvit.manifest import Journal

    path = tmp_path / JOURNAL_NAME
    path.write_text('{"path": "a.dcm", "status": "ok"}\n{"path": "b.dcm", "sta')
    journal = Journal(path)
    journal.append({"path": "c.dcm", "status": "ok"})
    journal.close()
    assert sorted(read_journal(path)) == ["a.dcm", "c.dcm"]


def test_temp_files_a_killed_run_left_are_removed(rsna, tmp_path):
    from medvit.io import atomic_path

    out = tmp_path / "out"
    ingest(rsna, out, size=32, workers=1, progress=False, log=lambda m: None)
    # entered and never left, as in a process killed mid-write (kill -9 skips the cleanup)
    writes = [atomic_path(out / "images" / "x.npy"), atomic_path(out / "manifest.csv")]
    temps = [w.__enter__() for w in writes]
    for tmp in temps:
        tmp.write_bytes(b"half written")
    assert all(p.name.startswith(".") and p.name.endswith(".tmp") for p in temps)
    second = ingest(rsna, out, size=32, workers=1, progress=False, log=lambda m: None)
    assert second["skipped"] == 16 and not any(p.exists() for p in temps) and no_temp_files(out)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{p.stem}.npy" for p in dicoms(rsna))


def _marked_processes(mark: str) -> list[int]:
    """pids whose environment holds MEDVIT_TEST_MARK=mark (Linux /proc)."""
    pids = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"MEDVIT_TEST_MARK={mark}".encode() in env.read_bytes().split(b"\0"):
                pids.append(int(env.parent.name))
        except OSError:  # the process ended between the listing and the read
            continue
    return pids


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_and_resume_matches_uninterrupted_run(rsna, tmp_path, workers):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    cmd = [sys.executable, "-m", "medvit", "ingest", str(rsna), "--out", str(killed),
           "--size", "256", "--workers", str(workers), "--no-progress"]
    mark = f"{os.getpid()}-{workers}-{time.time()}"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MEDVIT_TEST_MARK": mark})
    journal = killed / JOURNAL_NAME
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "manifest.csv").exists()
    if sys.platform.startswith("linux"):  # orphaned workers leave within seconds
        deadline = time.time() + 20
        while _marked_processes(mark) and time.time() < deadline:
            time.sleep(0.2)
        assert _marked_processes(mark) == []
    done_before = len(read_journal(journal))
    assert 3 <= done_before < 16

    resumed = ingest(rsna, killed, size=256, workers=1, progress=False)
    assert resumed["skipped"] == done_before
    ingest(rsna, clean, size=256, workers=2, progress=False)
    assert (killed / "manifest.csv").read_bytes() == (clean / "manifest.csv").read_bytes()
    a, b = sorted((killed / "images").iterdir()), sorted((clean / "images").iterdir())
    assert [p.name for p in a] == [p.name for p in b] and len(a) == 16
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    assert no_temp_files(killed)


# ----------------------------------------------------------------------------- PHI

def test_no_phi_in_any_output(rsna, tmp_path, capfd):
    out = tmp_path / "data"
    src = tmp_path / "src"
    shutil.copytree(rsna, src)
    (src / "train_images" / "junk.dcm").write_text("broken")
    assert main(["ingest", str(src), "--out", str(out), "--size", "32", "--workers", "1"]) == 0
    captured = capfd.readouterr()
    secrets = {synth.PHI_MARKER}
    for path in dicoms(rsna / "train_images"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in (*synth.PHI_KEYWORDS, "ContentDate"):  # "rsna" files: a date in ContentDate
            value = str(ds.get(keyword, "") or "")
            if value:
                secrets.add(value)
                secrets.update(part for part in value.replace("^", " ").split() if len(part) > 3)
    birth = {str(pydicom.dcmread(p, stop_before_pixels=True).get("PatientBirthDate", ""))
             for p in dicoms(rsna / "train_images")} - {""}  # synth's "rsna" files have none
    secrets |= birth | {f"{b[:4]}-{b[4:6]}-{b[6:]}" for b in birth}
    secrets.discard("")
    blobs = {"stdout": captured.out.encode(), "stderr": captured.err.encode()}
    for p in out.rglob("*"):
        if p.is_file():
            blobs[str(p)] = p.read_bytes()
    assert len(blobs) > 16 + 4
    leaks = [(name, s) for name, blob in blobs.items() for s in secrets if s.encode() in blob]
    assert leaks == []


def test_no_patient_id_in_any_output_without_labels(rsna, tmp_path, capfd):
    """Issue 11: without a labels CSV the header's PatientID was written as is; synth's
    "id_is_name" files carry PatientID = PatientName (de-identification tools do that). Every
    output (manifest, journal, ingest.json, the log) carries pseudonyms only."""
    out = tmp_path / "data"
    assert main(["ingest", str(rsna / "train_images"), "--out", str(out), "--size", "32", "--workers", "2"]) == 0
    captured = capfd.readouterr()
    header_ids = set()
    for path in dicoms(rsna / "train_images"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if str(ds.PatientID) == str(ds.get("PatientName", "")):
            header_ids.add(str(ds.PatientID))
    assert header_ids  # the case is exercised
    blobs = {"stdout": captured.out.encode(), "stderr": captured.err.encode()}
    blobs.update({str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    assert (out / ".ingest-journal.jsonl") in {Path(k) for k in blobs}
    leaks = [(name, s) for name, blob in blobs.items() for s in header_ids | {synth.PHI_MARKER} if s.encode() in blob]
    assert leaks == []
    rows = read_manifest(out)
    assert {r["patient_id_source"] for r in rows} == {"header_hmac"}
    assert len({r["patient_id"] for r in rows}) == 4  # one pseudonym per patient


def test_modality_column_and_not_mammogram_rows(tmp_path):
    from dicom_factory import CT_IMAGE, breast_image, edit_dicom, write_dicom

    src = tmp_path / "src"
    src.mkdir()
    mg = write_dicom(src / "mg.dcm", breast_image(64, 48))
    edit_dicom(mg, src / "ct.dcm", Modality="CT", SOPClassUID=CT_IMAGE)
    edit_dicom(mg, src / "bare.dcm", Modality=None, SOPClassUID=None)
    summary = ingest(src, tmp_path / "data", size=32, workers=1, progress=False)
    rows = {r["image_id"]: r for r in read_manifest(tmp_path / "data")}
    assert summary["errors_by_reason"] == {"not_mammogram": 1}
    assert (rows["ct"]["status"], rows["ct"]["reason"], rows["ct"]["modality"]) == ("error", "not_mammogram", "CT")
    assert (rows["mg"]["modality"], rows["bare"]["modality"]) == ("MG", "(none; MG SOP class)")  # file meta
    mg_cache = tmp_path / "data" / rows["mg"]["cache"]
    stamp = mg_cache.stat().st_mtime_ns
    args = ["ingest", str(src), "--out", str(tmp_path / "data"), "--size", "32", "--workers", "1", "--no-progress"]
    assert main(args + ["--any-modality"]) == 0
    rows = {r["image_id"]: r for r in read_manifest(tmp_path / "data")}
    assert (rows["ct"]["status"], rows["ct"]["modality"]) == ("ok", "CT")
    assert mg_cache.stat().st_mtime_ns == stamp  # the flag redoes only the files it decides
    assert main(args) == 0  # and off again: the CT file is refused again, the mammograms kept
    rows = {r["image_id"]: r for r in read_manifest(tmp_path / "data")}
    assert (rows["ct"]["status"], rows["mg"]["status"]) == ("error", "ok")
    assert mg_cache.stat().st_mtime_ns == stamp


def test_empty_or_missing_source_fails_naming_it_and_writes_nothing(tmp_path, capsys):
    from medvit.errors import MedvitError

    (tmp_path / "empty").mkdir()
    with pytest.raises(MedvitError, match="no input files found"):
        ingest(tmp_path / "empty", tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out").exists()
    assert main(["ingest", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert "missing: not a folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_public_ct_slice_with_id_equal_to_name(tmp_path, capfd):
    """pydicom's bundled 693_J2KI.dcm is the corpus' 693_UNCI.dcm CT head slice (Modality CT,
    PatientID = PatientName = 'CQ500-CT-310') in JPEG 2000: refused as not_mammogram, accepted
    with --any-modality, and its PatientID appears in no output either way."""
    from pydicom.data import get_testdata_file

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy2(get_testdata_file("693_J2KI.dcm", download=False), src / "693_J2KI.dcm")
    secret = "CQ500-CT-310"
    for flags in ([], ["--any-modality"]):
        out = tmp_path / ("any" if flags else "mg")
        assert main(["ingest", str(src), "--out", str(out), "--size", "32", "--workers", "1", *flags]) == 0
        (row,) = read_manifest(out)
        if flags:
            assert (row["status"], row["modality"], row["patient_id_source"]) == ("ok", "CT", "header_hmac")
        else:
            assert (row["status"], row["reason"]) == ("error", "not_mammogram")
        blobs = [p.read_bytes() for p in out.rglob("*") if p.is_file()] + [capfd.readouterr().err.encode()]
        assert not any(secret.encode() in blob for blob in blobs)


def test_rsna_syntax_file_with_a_modality_lut_item_lacking_its_descriptor_ingests_ok(tmp_path):
    """The defect of pylibjpeg-data's JPEGLosslessSV1/JPEGLosslessP14SV1_1s_1f_u_16_16.dcm (a
    16-bit JPEG Lossless SV1 image whose Modality LUT Sequence item has no LUTDescriptor) rebuilt
    with pydicom: it was `decode_failed (TypeError ...)`; now ok, the fallback in the manifest."""
    from dicom_factory import breast_image, edit_dicom, lut_item, write_dicom

    src = tmp_path / "src"
    src.mkdir()
    sv1 = write_dicom(tmp_path / "sv1.dcm", breast_image(96, 80, bits=16), syntax="sv1", bits_stored=16)
    edit_dicom(sv1, src / "JPEGLosslessP14SV1_1s_1f_u_16_16.dcm", Modality=None, SOPClassUID=None,
               ModalityLUTSequence=[lut_item(range(0, 65536, 16), None)])
    summary = ingest(src, tmp_path / "data", size=32, workers=1, progress=False)
    (row,) = read_manifest(tmp_path / "data")
    assert summary["ok"] == 1 and (row["status"], row["transfer_syntax"]) == ("ok", "1.2.840.10008.1.2.4.70")
    assert row["lut_fallback"] == "modality_lut:identity" and row["voi"] == "minmax"


# ----------------------------------------------------------------------------- issue 14

def _rsna_style_files(rsna: Path) -> list[Path]:
    """synth's files in the exact shape of RSNA's (no Modality, no SOPClassUID, DX class in the file meta)."""
    picked = [p for p in dicoms(rsna / "train_images")
              if pydicom.dcmread(p, stop_before_pixels=True).file_meta.MediaStorageSOPClassUID
              == synth.RSNA_SOP_CLASS]
    assert len(picked) == 4
    for path in picked:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert "Modality" not in ds and "SOPClassUID" not in ds
    return picked


def test_rsna_shaped_files_pass_with_default_flags(rsna, tmp_path):
    """Issue 14: every real RSNA file was refused (not_mammogram). RSNA-shaped files ingest ok
    with default flags, with labels and without a labels CSV (label empty, fold -1)."""
    picked = _rsna_style_files(rsna)
    src = tmp_path / "src"
    for path in picked:
        dst = src / "train_images" / path.parent.name / path.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dst)
    labels = [r for r in csv.DictReader(open(rsna / "train.csv")) if r["image_id"] in {p.stem for p in picked}]
    with open(src / "train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(labels[0]))
        writer.writeheader()
        writer.writerows(labels)
    summary = ingest(src, tmp_path / "labelled", size=32, workers=1, progress=False)
    rows = read_manifest(tmp_path / "labelled")
    assert summary["ok"] == 4 and summary["error"] == 0
    assert {r["modality"] for r in rows} == {"(none; DX SOP class)"}
    assert all(r["label"] in ("0", "1") and r["view"] in ("CC", "MLO") for r in rows)
    (src / "train.csv").unlink()  # no labels CSV: an inference manifest, every image still ok
    summary = ingest(src, tmp_path / "unlabelled", size=32, workers=1, progress=False)
    rows = read_manifest(tmp_path / "unlabelled")
    assert summary["ok"] == 4 and "labelled" not in summary
    assert all((r["status"], r["label"], r["fold"], r["view"]) == ("ok", "", "-1", "") for r in rows)


def test_non_mammogram_sop_classes_without_modality_are_refused(rsna, tmp_path):
    """No Modality and an MR, CT or unknown SOP class: not_mammogram (DX, CR and SC pass)."""
    from dicom_factory import edit_dicom

    mg = _rsna_style_files(rsna)[0]
    src = tmp_path / "src"
    src.mkdir()
    classes = {"mr": "1.2.840.10008.5.1.4.1.1.4", "ct": "1.2.840.10008.5.1.4.1.1.2",
               "private": "1.2.826.0.1.3680043.9.9999.1", "cr": "1.2.840.10008.5.1.4.1.1.1",
               "sc": "1.2.840.10008.5.1.4.1.1.7", "dxproc": "1.2.840.10008.5.1.4.1.1.1.1.1"}
    for name, uid in classes.items():
        edit_dicom(mg, src / f"{name}.dcm", MediaStorageSOPClassUID=None)
        ds = pydicom.dcmread(src / f"{name}.dcm")
        ds.file_meta.MediaStorageSOPClassUID = uid
        ds.save_as(src / f"{name}.dcm")
    ingest(src, tmp_path / "data", size=32, workers=1, progress=False)
    rows = {r["image_id"]: r for r in read_manifest(tmp_path / "data")}
    got = {k: (r["status"], r["reason"], r["modality"]) for k, r in rows.items()}
    assert got == {
        "mr": ("error", "not_mammogram", "(none; MR SOP class)"),
        "ct": ("error", "not_mammogram", "(none; CT SOP class)"),
        "private": ("error", "not_mammogram", "(none; unknown SOP class)"),
        "cr": ("ok", "", "(none; CR SOP class)"), "sc": ("ok", "", "(none; SC SOP class)"),
        "dxproc": ("ok", "", "(none; DX SOP class)")}
    assert "MR Image Storage" in rows["mr"]["error"] and "--any-modality" in rows["mr"]["error"]
    summary = ingest(src, tmp_path / "data", size=32, workers=1, progress=False, any_modality=True)
    assert summary["processed"] == 3 and summary["ok"] == 6  # the flag redoes only the files it decides


def test_rectangular_canvas_resume_and_settings(rsna_copy, tmp_path, capsys):
    """`--size HxW`: H x W images, the canvas in the manifest and ingest.json; a rerun at the same
    canvas skips every file (also when the journal holds an old "size=N" key), another redoes them."""
    from medvit.ingest import ingest_settings, ingest_size

    out = tmp_path / "data"
    assert main(["ingest", str(rsna_copy), "--out", str(out), "--size", "64x32", "--workers", "2",
                 "--no-progress"]) == 0
    rows = read_manifest(out)
    assert {r["canvas"] for r in rows} == {"64x32"} and {r["settings"].split(";")[0] for r in rows} == {"size=64x32"}
    for r in rows:
        image = np.load(out / r["cache"])
        assert image.shape == (64, 32) and image[:, 0].max() > 0  # flush left
        assert r["background_level"] != "" and 0 <= float(r["background_level"]) <= 1
    settings = ingest_settings(out)
    assert settings["canvas"] == "64x32" and json.loads((out / "ingest.json").read_text())["canvas"] == "64x32"
    assert settings["labels"] and settings["folds"] == 4
    assert ingest_size(out) == (64, 32)
    again = ingest(rsna_copy, out, size=(64, 32), workers=1, progress=False)
    assert again["processed"] == 0 and again["skipped"] == 16
    squared = ingest(rsna_copy, out, size=32, workers=1, progress=False)
    assert squared["processed"] == 16 and ingest_size(out) == (32, 32)
    # a journal from before HxW keys ("size=32;v=N") still counts as 32x32
    journal = out / JOURNAL_NAME
    journal.write_text(journal.read_text().replace('"size=32x32;', '"size=32;'))
    assert '"size=32;' in journal.read_text()
    assert ingest(rsna_copy, out, size="32x32", workers=1, progress=False)["skipped"] == 16
    with pytest.raises(SystemExit) as exit_:
        main(["ingest", str(rsna_copy), "--out", str(out), "--size", "64y32"])
    assert exit_.value.code == 2 and "--size" in capsys.readouterr().err


def test_ingest_settings_reads_old_and_refuses_broken_files(tmp_path):
    from medvit.errors import MedvitError
    from medvit.ingest import ingest_settings, ingest_size

    assert ingest_settings(tmp_path / "nowhere") == {} and ingest_settings(None) == {}
    assert ingest_size(tmp_path / "nowhere") == (512, 512)
    (tmp_path / "ingest.json").write_text(json.dumps({"settings": {"size": 512, "folds": 4}, "summary": {}}))
    assert ingest_settings(tmp_path) == {"size": 512, "folds": 4, "canvas": "512x512"}  # before HxW
    (tmp_path / "manifest.csv").write_text("image_id,patient_id,label,fold,status,cache,settings\n"
                                           "a,p,1,0,ok,images/a.npy,size=384;v=4\n")
    assert ingest_size(tmp_path) == (384, 384)  # an old manifest's square
    (tmp_path / "ingest.json").write_text("{not json")
    with pytest.raises(MedvitError, match="ingest.json"):
        ingest_settings(tmp_path)


def test_manifest_write_and_read_raise_no_warning(rsna, tmp_path):
    """Issue 14: read_manifest filled a float column (an all-empty `split`) with a string:
    Pandas4Warning now, an error in the next pandas. Any warning fails this test."""
    import warnings

    from medvit.manifest import read_manifest as read_frame

    src = tmp_path / "src"
    shutil.copytree(rsna / "train_images", src)  # no labels: split, label, view all empty
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ingest(src, tmp_path / "data", size=32, workers=1, progress=False)
        frame = read_frame(tmp_path / "data")
    assert (frame["split"] == "").all() and frame["label"].isna().all() and len(frame) == 16
    assert frame["canvas"].eq("32x32").all() and frame["background_level"].dtype.kind == "f"
