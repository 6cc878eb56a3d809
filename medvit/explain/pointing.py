"""Pointing game (Zhang et al. 2016): does a map's maximum fall inside the lesion?

Synth lesion masks are stored in the DICOM's pixel geometry; `lesion_mask_in_model_space`
moves one through the preprocessing's crop, flip and aspect-kept resize + pad, using the
crop box and flip recorded in the info dict (`Preprocessed.info`, copied to the manifest) and
the layout functions of `medvit.dicom.normalize` (`out_shape`, `fit_and_pad`), so the placement
rule is not written twice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from medvit.dicom.normalize import fit_and_pad, out_shape
from medvit.errors import MedvitError

BOX_KEYS = ("crop_y0", "crop_x0", "crop_y1", "crop_x1")


def pointing_game(heatmaps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> dict[str, Any]:
    """Share of images whose map maximum lies inside the mask (each mask resized to its map,
    nearest). Masks left empty at the map's size are skipped and counted in `skipped`.
    Returns {"hits", "n", "score", "skipped"}; score is None when n is 0."""
    if len(heatmaps) != len(masks):
        raise ValueError(f"pointing_game: {len(heatmaps)} maps but {len(masks)} masks")
    hits = n = skipped = 0
    for heat, mask in zip(heatmaps, masks):
        heat = np.asarray(heat, dtype=np.float32)
        mask = np.asarray(mask)
        if heat.ndim != 2 or mask.ndim != 2:
            raise ValueError(f"pointing_game: maps and masks must be 2-D, got {heat.shape} and {mask.shape}")
        inside = cv2.resize((mask > 0).astype(np.uint8), heat.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
        if not inside.any():
            skipped += 1
            continue
        peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
        hits += bool(inside[peak])
        n += 1
    return {"hits": hits, "n": n, "score": hits / n if n else None, "skipped": skipped}


def _flag(value: Any) -> bool:
    """A manifest's 0/1 (or True/False) text, or a real bool."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def read_mask(path: str | Path) -> np.ndarray:
    """A lesion mask PNG as a bool array."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise MedvitError(f"{path}: cannot read the lesion mask (missing or not a PNG)")
    if mask.ndim == 3:
        mask = mask[..., 0]
    return mask > 0


def lesion_mask_in_model_space(mask_png_path: str | Path, info: dict, size: int) -> np.ndarray:
    """(size, size) bool: a stored-geometry lesion mask cropped to the breast box, flipped when
    the image was, resized with its aspect kept and padded flush left, centred vertically —
    the layout `preprocess(path, size)` gives the image."""
    mask = read_mask(mask_png_path)
    try:
        box = tuple(int(float(info[k])) for k in BOX_KEYS)
    except (KeyError, TypeError, ValueError) as err:
        raise MedvitError(f"{mask_png_path}: the preprocessing info lacks a usable crop box "
                          f"({', '.join(BOX_KEYS)}): {err}") from err
    rows, cols = info.get("rows"), info.get("columns")
    if rows not in (None, "") and cols not in (None, "") and mask.shape != (int(rows), int(cols)):
        raise MedvitError(f"{mask_png_path}: mask is {mask.shape[0]}x{mask.shape[1]} but the DICOM "
                          f"is {rows}x{cols}; it belongs to another image")
    y0, x0, y1, x1 = box
    crop = mask[y0:y1, x0:x1]
    if _flag(info.get("flipped", False)):
        crop = crop[:, ::-1]
    # a mask resized like the image (area average), then a majority vote per pixel
    return fit_and_pad(crop.astype(np.float32), int(size), out_shape(box, int(size))) >= 0.5
