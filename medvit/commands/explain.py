"""`medvit explain RUN_DIR IMAGES...`: where a trained model looks (overlays + raw maps),
and `medvit explain RUN_DIR --pointing SYNTH_DIR`: the pointing-game score on synth lesions."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medvit.runs import LoadedRun

BATCH = 8


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain", help="attention / rollout / Grad-CAM maps and overlays for a trained run",
        description="Write OUT/<image_id>_<method>.png (overlay) and .npy (raw map in [0, 1], model input "
                    "size) for each IMAGE; with --compare RUN_DIR2 also OUT/<image_id>_panel.png (both runs "
                    "side by side); for a ViT with --method attention also OUT/<image_id>_attention_heads.npy "
                    "(layers x heads x grid). With --pointing SYNTH_DIR instead of IMAGES: the pointing game "
                    "over the ingested synth images that have a lesion mask (SYNTH_DIR/lesion_masks/"
                    "<image_id>.png), printed and written to OUT/pointing_<method>.json. With --class-mean: "
                    "the mean map of each class over the labelled images, OUT/class_mean_<method>.png/.npy/.json.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="training run directory (or a checkpoint file)")
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="DICOM files (preprocessed as at ingest) or ingested image_ids (read from --data)")
    p.add_argument("--method", default="auto",
                   help="auto (rollout for ViTs, gradcam for CNNs) | attention | rollout | gradcam")
    p.add_argument("--checkpoint", default="best", help="best | last | a checkpoint FILE (default: best)")
    p.add_argument("--data", metavar="DIR", help="ingest output folder (default: the run's data.dir)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/explain)")
    p.add_argument("--compare", metavar="RUN_DIR2",
                   help="a second run (e.g. a CNN next to a ViT) shown beside the first in a panel")
    p.add_argument("--pointing", metavar="SYNTH_DIR",
                   help="score the pointing game on the synth images with lesion masks ingested into --data")
    p.add_argument("--tolerance", type=float, default=None,
                   help="with --pointing: a hit within this share of the map side of the lesion "
                        "(default 15/224, Zhang et al. 2016's 15 px at 224 px)")
    p.add_argument("--class-mean", action="store_true",
                   help="mean map per class over the ingested, labelled images in --data (seed 000, fig. 16b)")
    p.add_argument("--fold", type=int,
                   help="with --pointing or --class-mean: only images of this fold (default: all)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.set_defaults(func=run)


def load_run(run_dir: str, which: str, device):
    """The run through the one run loader (`medvit.runs`); explain works on one-channel models."""
    from medvit.errors import ConfigError
    from medvit.runs import load_run as load

    run = load(run_dir, which, str(device))
    if run.in_chans != 1:
        raise ConfigError(f"{run.checkpoint}: the model takes {run.in_chans} channels; explain works on "
                          "single-channel mammography models")
    return run


def save_json(path: Path, payload: dict) -> Path:
    from medvit.io import write_text

    return write_text(path, json.dumps(payload, indent=2) + "\n")


class ImageSource:
    """IMAGE arguments -> (image_id, full-size image float [0, 1]): DICOM files through the one
    `preprocess`, image_ids from DATA_DIR's cache via the training Dataset's loader."""

    def __init__(self, data_dir: str | None, ingest_size: tuple[int, int]) -> None:
        self.data_dir = data_dir
        self.ingest_size = ingest_size
        self._frame = None

    def frame(self):
        from medvit.data.datasets import read_manifest
        from medvit.errors import ConfigError

        if self._frame is None:
            if not self.data_dir:
                raise ConfigError("no data folder: pass --data DIR (the ingest output) to explain image_ids")
            self._frame = read_manifest(self.data_dir)
        return self._frame

    def load(self, item: str, file_id: str | None = None):
        """(image_id, image) for an image_id or a DICOM file (named `file_id`, else its stem)."""
        import numpy as np

        from medvit.data.datasets import MammoDataset
        from medvit.errors import MedvitError, suggest
        from medvit.ingest import image_stem

        if Path(item).is_file():
            from medvit.dicom.normalize import preprocess
            from medvit.dicom.read import quiet_pydicom  # pydicom warnings can quote PHI
            with quiet_pydicom():
                image = preprocess(item, size=self.ingest_size).image
            return file_id or image_stem(Path(item).name), image.astype(np.float32) / np.float32(65535)
        frame = self.frame()
        rows = frame[frame["image_id"] == item]
        if rows.empty:
            raise MedvitError(f"{item}: neither a file nor an image_id in {self.data_dir}/manifest.csv; "
                              f"{suggest(item, frame['image_id'].tolist()[:5000])}")
        if rows.iloc[0]["status"] != "ok":
            raise MedvitError(f"{item}: ingest failed for this image ({rows.iloc[0].get('reason', '')})")
        return item, MammoDataset(self.data_dir, rows.iloc[:1]).load(0)


def explain_images(args: argparse.Namespace, primary: LoadedRun, out: Path, device) -> int:
    from medvit.errors import MedvitError
    from medvit.explain import cls_attention, explain, resolve_method, save_overlay, save_panel
    from medvit.ingest import assign_image_ids
    from medvit.io import save_npy
    from medvit.models.inputs import model_input

    method = resolve_method(primary.model, args.method)
    compare = None
    if args.compare:
        which = args.checkpoint if args.checkpoint in ("best", "last") else "best"
        compare = load_run(args.compare, which, device)
        try:
            compare_method = resolve_method(compare.model, args.method)
        except MedvitError:  # e.g. --method rollout for a ViT compared with a CNN: the CNN's default
            compare_method = resolve_method(compare.model, "auto")
    source = ImageSource(args.data or primary.cfg.data.dir, primary.ingest_size)
    # DICOM files are named by their stem; two called x.dcm get x-<hash of the path as given>
    file_ids = assign_image_ids([item for item in args.images if Path(item).is_file()])
    failed = 0
    for item in args.images:
        try:
            image_id, full = source.load(item, file_ids.get(item))
            x = model_input(full, primary.image_size)[None].to(device)
            heat = explain(primary.model, x, method)[0]
            save_npy(out / f"{image_id}_{method}.npy", heat)
            save_overlay(full, heat, out / f"{image_id}_{method}.png", title=f"{image_id}  {primary.name} {method}")
            if method == "attention":
                save_npy(out / f"{image_id}_attention_heads.npy", cls_attention(primary.model, x)[0].numpy())
            if compare is not None:
                other = explain(compare.model, model_input(full, compare.image_size)[None].to(device),
                                compare_method)[0]
                save_panel(full, {f"{primary.name} {method}": heat, f"{compare.name} {compare_method}": other},
                           out / f"{image_id}_panel.png", title=image_id)
            print(f"{image_id}: {out / f'{image_id}_{method}.png'}")
        except MedvitError as err:  # a batch job records the error and goes on
            print(f"medvit explain: {err}", file=sys.stderr)
            failed += 1
    print(f"explained {len(args.images) - failed}/{len(args.images)} image(s) with {method}; wrote {out}")
    return 1 if failed else 0


def pointing(args: argparse.Namespace, primary: LoadedRun, out: Path, device) -> int:
    from medvit.data.datasets import read_manifest
    from medvit.errors import MedvitError
    from medvit.explain import pointing_on_frame, resolve_method
    from medvit.explain.pointing import rows_with_masks

    method = resolve_method(primary.model, args.method)
    data_dir = args.data or primary.cfg.data.dir
    masks_dir = Path(args.pointing) / "lesion_masks"
    if not masks_dir.is_dir():
        raise MedvitError(f"{masks_dir}: no lesion masks folder; --pointing wants a `medvit synth` output")
    frame = read_manifest(data_dir)
    frame = frame[frame["status"] == "ok"]
    if args.fold is not None:
        frame = frame[frame["fold"] == args.fold]
    frame, pngs = rows_with_masks(frame, masks_dir)
    if frame.empty:
        raise MedvitError(f"{data_dir}/manifest.csv: no ingested image has a mask in {masks_dir} "
                          "(ingest the synth folder into --data first)")
    result = pointing_on_frame(primary.model, data_dir, frame, pngs, primary.image_size, method, device,
                               tolerance=args.tolerance)  # checked in run()
    result.update(backbone=primary.name, checkpoint=args.checkpoint, fold=args.fold)

    def share(hits: int) -> str:
        return f"{hits}/{result['n']} = {hits / result['n']:.3f}" if result["n"] else "n/a"

    print(f"pointing game ({primary.name}, {method}): {share(result['hits'])} within "
          f"{args.tolerance:.3f} of the side; {share(result['hits_strict'])} inside the lesion")
    if result["skipped"]:
        print(f"skipped {result['skipped']} image(s) whose lesion is outside the crop or below one pixel")
    path = save_json(out / f"pointing_{method}.json", result)
    print(f"wrote {path}")
    return 0


def class_means(args: argparse.Namespace, primary: LoadedRun, out: Path, device) -> int:
    """Mean map per label over the ingested images (and their mean image as the backdrop)."""
    import numpy as np
    from torch.utils.data import DataLoader

    from medvit.data.datasets import MammoDataset, read_manifest
    from medvit.errors import MedvitError
    from medvit.explain import class_mean_maps, resolve_method, save_panel
    from medvit.io import save_npy

    method = resolve_method(primary.model, args.method)
    data_dir = args.data or primary.cfg.data.dir
    frame = read_manifest(data_dir)
    frame = frame[(frame["status"] == "ok") & frame["label"].notna()]
    if args.fold is not None:
        frame = frame[frame["fold"] == args.fold]
    if frame.empty:
        raise MedvitError(f"{data_dir}/manifest.csv: no labelled, ingested image to average"
                          + (f" in fold {args.fold}" if args.fold is not None else ""))
    loader = DataLoader(MammoDataset(data_dir, frame.reset_index(drop=True), primary.image_size),
                        batch_size=BATCH)
    image_sum = np.zeros(primary.image_size)  # (H, W)

    def batches():
        nonlocal image_sum
        for x, y in loader:
            image_sum = image_sum + x[:, 0].sum(0).numpy()
            yield x.to(device), y

    means = class_mean_maps(primary.model, batches(), method)
    counts = frame["label"].astype(int).value_counts().to_dict()
    labels = {f"label {c} (n={counts[c]})": m for c, m in means.items()}
    save_panel(image_sum / len(frame), labels, out / f"class_mean_{method}.png",
               title=f"{primary.name}: mean {method} map per class")
    save_npy(out / f"class_mean_{method}.npy", np.stack(list(means.values())))
    save_json(out / f"class_mean_{method}.json", {"method": method, "backbone": primary.name, "fold": args.fold,
                                                 "classes": list(means), "counts": [counts[c] for c in means]})
    print(f"class-mean {method} maps for {len(frame)} images ({', '.join(labels)}) -> {out}/class_mean_{method}.png")
    return 0


def run(args: argparse.Namespace) -> int:
    from medvit.errors import ConfigError
    from medvit.train.setup import pick_device

    modes = [m for m, on in (("IMAGES", bool(args.images)), ("--pointing", bool(args.pointing)),
                             ("--class-mean", args.class_mean)) if on]
    if len(modes) != 1:
        raise ConfigError("give one of IMAGES (DICOM files or image_ids), --pointing SYNTH_DIR or --class-mean"
                          + (f"; got {' and '.join(modes)}" if modes else ""))
    if args.tolerance is None:
        from medvit.explain.pointing import TOLERANCE

        args.tolerance = TOLERANCE
    elif not args.pointing:
        raise ConfigError("--tolerance only applies to --pointing")
    elif not 0.0 <= args.tolerance < 1.0:
        raise ConfigError(f"--tolerance {args.tolerance}: a share of the map side in [0, 1), e.g. 0.067")
    device = pick_device(args.device)
    primary = load_run(args.run_dir, args.checkpoint, device)
    base = Path(args.run_dir) if Path(args.run_dir).is_dir() else Path(args.run_dir).parent
    out = Path(args.out) if args.out else base / "explain"
    if args.pointing:
        return pointing(args, primary, out, device)
    if args.class_mean:
        return class_means(args, primary, out, device)
    return explain_images(args, primary, out, device)
