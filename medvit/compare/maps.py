"""Where the runs look: the disagreement gallery (every run's probability and map side by side,
one colour scale: ViT rollout, CNN Grad-CAM) and the pointing game on lesion masks. Maps come
from `medvit.explain`, the one place that computes them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medvit.compare.runs import Run


def _map_method(model) -> str:
    from medvit.explain import resolve_method

    return resolve_method(model, "auto")  # rollout for ViTs, Grad-CAM for CNNs


def disagreement_gallery(runs: list[Run], out: Path, k: int) -> list[dict]:
    """The k images where the runs disagree most: first those where one run is right and another
    wrong at their thresholds, by the spread of the probability they give the true class (one
    confidently right, the other confidently wrong first), taking turns between the runs that are
    right so each run's wins appear; then, when fewer than k such images
    exist, the largest spreads among the rest (`split` False). One panel each: every run's map on
    one colour scale, its probability, right/wrong and the raw map's range in the title (`_map`)."""
    from medvit.compare.runs import correct
    from medvit.explain import save_panel

    if k <= 0:
        return []
    y = runs[0].frame["label"].to_numpy()
    probs = np.stack([r.frame["prob"].to_numpy() for r in runs])  # (R, N)
    truth = np.where(y == 1, probs, 1 - probs)
    right = np.stack([correct(r) for r in runs])
    split = right.any(axis=0) & ~right.all(axis=0)
    spread = truth.max(axis=0) - truth.min(axis=0)
    ranked = [int(i) for i in np.argsort(-spread, kind="stable")]
    # round-robin over the run that is most right on each image, so every run's wins are shown
    winner = truth.argmax(axis=0)
    queues = [[i for i in ranked if split[i] and winner[i] == w] for w in range(len(runs))]
    picked: list[int] = []
    while any(queues) and len(picked) < k:
        for q in queues:
            if q and len(picked) < k:
                picked.append(q.pop(0))
    order = picked + [i for i in ranked if not split[i]][:k - len(picked)]
    if not order:
        return []
    models = [r.model for r in runs]  # built once per run (medvit.runs)
    methods = [_map_method(m) for m in models]
    items = []
    for i in order:
        image_id = str(runs[0].frame["image_id"].iloc[i])
        full = runs[0].dataset.load(i)
        maps, ranges, notes = {}, {}, {}
        for r, model, method, ok in zip(runs, models, methods, right[:, i]):
            heat, ranges[r.name], note = _map(model, r.dataset[i][0][None].to(r.device), method)
            caption = f"{r.name} ({method})\np={r.frame['prob'].iloc[i]:.2f} {'right' if ok else 'wrong'}"
            caption += f"\nmap range {_num(ranges[r.name][0])}–{_num(ranges[r.name][1])}"
            if note:
                notes[r.name] = note
                caption += f"\n{note}"
            maps[caption] = heat
        name = f"gallery/{_safe(image_id)}.png"
        save_panel(full, maps, out / name, title=f"image {image_id}, label {int(y[i])}")
        items.append({"image_id": image_id, "label": int(y[i]), "figure": name, "spread": float(spread[i]),
                      "split": bool(split[i]),
                      "probs": {r.name: float(r.frame["prob"].iloc[i]) for r in runs},
                      "right": {r.name: bool(ok) for r, ok in zip(runs, right[:, i])},
                      "methods": {r.name: m for r, m in zip(runs, methods)},
                      "map_ranges": ranges, "map_notes": notes})
    return items


def _map(model, x, method: str) -> tuple[np.ndarray, list[float], str]:
    """(the map in [0, 1] as every panel shows it, [min, max] of the raw map, a note or ""). A raw
    map with no contrast is drawn as zeros, which reads like a missing map: the note says why."""
    import torch

    from medvit.explain import explain, unit_range

    raw = explain(model, x, method, scale=False)[0]
    lo, hi = float(raw.min()), float(raw.max())
    heat = unit_range(torch.from_numpy(raw)[None])[0].numpy()  # what explain() shows: flat -> 0
    if hi <= 0 and method == "gradcam":  # Grad-CAM is a ReLU: zero = nothing supports the class
        note = "no positive evidence: Grad-CAM is zero"
    elif hi <= lo:
        note = f"flat map: every value is {_num(hi)}"
    else:
        note = ""
    return heat.astype(np.float32), [lo, hi], note


def _num(v: float) -> str:
    return f"{v:.3g}"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]


def pointing(runs: list[Run], masks: Path | None) -> dict[str, Any] | None:
    """Pointing game per run on the compared images that have a synth lesion mask."""
    from medvit.data.datasets import read_manifest
    from medvit.explain import pointing_on_frame
    from medvit.explain.pointing import rows_with_masks

    if masks is None:
        return None
    data_dir = runs[0].cfg.data.dir
    frame = read_manifest(data_dir)
    frame = frame[frame["image_id"].isin(set(runs[0].frame["image_id"])) & (frame["label"] == 1)]
    frame, pngs = rows_with_masks(frame, masks)
    if frame.empty:
        return None
    result: dict[str, Any] = {"n_images": int(len(frame)), "runs": {}}
    for r in runs:
        res = pointing_on_frame(r.model, data_dir, frame, pngs, r.image_size, _map_method(r.model), r.device)
        res.pop("image_ids", None)
        result["runs"][r.name] = res
    return result
