"""Pointing game (Zhang et al. 2016): does a map's maximum fall on the lesion?

Synth lesion masks are stored in the DICOM's pixel geometry; `lesion_mask_in_model_space`
moves one through the preprocessing's crop, flip and aspect-kept resize + pad with
`medvit.dicom.normalize.apply_geometry` (the crop box and flip recorded in the info dict,
`Preprocessed.info`, copied to the manifest), the code `preprocess` itself places images with.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from medvit.dicom.normalize import apply_geometry
from medvit.errors import MedvitError


# Zhang et al. (2016) count a hit when the maximum lies within 15 px of the object at ~224 px input;
# as a share of the map's side that is 15/224, so coarse maps (a CNN's 4x4 last stage upsampled)
# are scored as the paper scores them.
TOLERANCE = 15 / 224


def pointing_game(heatmaps: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                  tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Share of images whose map maximum lies inside the mask (each mask resized to its map,
    nearest) or within `tolerance` x the map's side of it; `hits_strict` counts tolerance 0.
    Masks left empty at the map's size are skipped and counted in `skipped`.
    Returns {"hits", "n", "score", "hits_strict", "score_strict", "tolerance", "skipped"};
    scores are None when n is 0."""
    if len(heatmaps) != len(masks):
        raise ValueError(f"pointing_game: {len(heatmaps)} maps but {len(masks)} masks")
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"pointing_game: tolerance is a share of the map side in [0, 1), got {tolerance}")
    hits = strict = n = skipped = 0
    for heat, mask in zip(heatmaps, masks):
        heat = np.asarray(heat, dtype=np.float32)
        mask = np.asarray(mask)
        if heat.ndim != 2 or mask.ndim != 2:
            raise ValueError(f"pointing_game: maps and masks must be 2-D, got {heat.shape} and {mask.shape}")
        inside = cv2.resize((mask > 0).astype(np.uint8), heat.shape[::-1], interpolation=cv2.INTER_NEAREST)
        if not inside.any():
            skipped += 1
            continue
        peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
        # distance of every pixel to the nearest mask pixel (0 inside)
        dist = cv2.distanceTransform((inside == 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        strict += bool(inside[peak])
        hits += bool(dist[peak] <= tolerance * max(heat.shape))
        n += 1
    return {"hits": hits, "n": n, "score": hits / n if n else None, "hits_strict": strict,
            "score_strict": strict / n if n else None, "tolerance": tolerance, "skipped": skipped}


def read_mask(path: str | Path) -> np.ndarray:
    """A lesion mask PNG as a bool array."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise MedvitError(f"{path}: cannot read the lesion mask (missing or not a PNG)")
    if mask.ndim == 3:
        mask = mask[..., 0]
    return mask > 0


def lesion_mask_in_model_space(mask_png_path: str | Path, info: dict, size: int | tuple[int, int]) -> np.ndarray:
    """(H, W) bool on the ingest canvas `size` (a side or (H, W)): a stored-geometry lesion mask
    cropped to the breast box, flipped when the image was, resized with its aspect kept and padded
    as `preprocess(path, size)` lays out the image (`normalize.apply_geometry`)."""
    mask = read_mask(mask_png_path)
    rows, cols = info.get("rows"), info.get("columns")
    if rows not in (None, "") and cols not in (None, "") and mask.shape != (int(rows), int(cols)):
        raise MedvitError(f"{mask_png_path}: mask is {mask.shape[0]}x{mask.shape[1]} but the DICOM "
                          f"is {rows}x{cols}; it belongs to another image")
    try:
        # a mask resized like the image (area average), then a majority vote per pixel
        return apply_geometry(mask.astype(np.float32), info, size) >= 0.5
    except ValueError as err:
        raise MedvitError(f"{mask_png_path}: {err}") from err


def rows_with_masks(frame, masks_dir: str | Path):
    """(the manifest rows that have a synth lesion mask, their mask PNG paths). Synth names a mask
    by its image_id, the DICOM's file stem (the manifest's path)."""
    from medvit.ingest import image_stem

    masks_dir = Path(masks_dir)
    pngs = [masks_dir / f"{image_stem(str(p))}.png" for p in frame["path"]]
    has_mask = np.array([p.is_file() for p in pngs], dtype=bool)
    return frame[has_mask].reset_index(drop=True), [p for p, k in zip(pngs, has_mask) if k]
