"""A synthetic mammogram drawn in code: breast outline, fat and fibroglandular texture, skin
line, pectoral muscle (MLO), an optional lesion (spiculated mass, calcification cluster or both)
and a burned-in laterality marker. `medvit.dicom.synth` turns these into DICOM files.

Everything draws from the `rng` passed in, so the same generator state gives the same pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from medvit.errors import ConfigError, suggest

KINDS = ("mass", "calcification", "both")


@dataclass
class Lesion:
    kind: str
    center_row: int
    center_col: int
    radius_px: int


@dataclass
class SynthImage:
    image: np.ndarray  # float32 (rows, cols) in [0, 1]; 1 = most attenuating (bright in MONOCHROME2)
    mask: np.ndarray  # uint8 0/255 lesion mask, all 0 without a lesion
    breast: np.ndarray  # bool: breast tissue incl. pectoral muscle
    marker: np.ndarray  # bool: burned-in marker pixels
    lesion: Lesion | None


def _smooth_noise(rng: np.random.Generator, rows: int, cols: int, cells: int) -> np.ndarray:
    """Roughly unit-variance noise, smooth on the scale of rows/cells: a coarse random grid
    upsampled bicubically (much cheaper than a wide Gaussian filter at full size)."""
    grid = rng.standard_normal((max(2, cells), max(2, round(cells * cols / rows))), dtype=np.float32)
    h = min(rows, 4 * max(2, cells))  # cubic to 4 px per cell, then linear to full size
    mid = cv2.resize(grid, (max(2, round(h * cols / rows)), h), interpolation=cv2.INTER_CUBIC)
    return mid if h == rows else _upsample(mid, rows, cols)


def _upsample(field: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return cv2.resize(field, (cols, rows), interpolation=cv2.INTER_LINEAR)


def _fractal_noise(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Sum of octaves, coarse ones strongest: a fibroglandular-looking texture. Built at a
    quarter of the size (all octaves are smooth there), then upsampled once."""
    h, w = max(8, rows // 4), max(8, cols // 4)
    total = np.zeros((h, w), np.float32)
    for cells, weight in ((6, 1.0), (14, 0.6), (32, 0.4), (80, 0.25)):
        total += weight * _smooth_noise(rng, h, w, cells)
    return _upsample(total / total.std(), rows, cols)


def _grain(rng: np.random.Generator, shape: tuple[int, int], sd: float) -> np.ndarray:
    """Near-Gaussian pixel noise (sum of two uniform bytes): 4x cheaper than standard_normal."""
    n = shape[0] * shape[1]
    a = np.frombuffer(rng.bytes(n), np.uint8).astype(np.float32)
    a += np.frombuffer(rng.bytes(n), np.uint8)
    a -= 255.0
    a *= sd / 104.2  # std of the sum of two uniform bytes
    return a.reshape(shape)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _breast_shape(rng: np.random.Generator, rows: int, cols: int, view: str):
    """Shape fields, chest wall on the left (column 0): rho, the normalised elliptic radius
    (breast where rho < 1, the skin at 1), and for MLO the pectoral field (muscle where < 1)."""
    yy = np.arange(rows, dtype=np.float32)[:, None]
    xx = np.arange(cols, dtype=np.float32)[None, :]
    mlo = view == "MLO"
    cy = rows * (rng.uniform(0.52, 0.6) if mlo else rng.uniform(0.46, 0.54))
    b = rows * (rng.uniform(0.42, 0.47) if mlo else rng.uniform(0.38, 0.45))
    a = cols * rng.uniform(0.62, 0.84)
    wobble = 0.025 * _smooth_noise(rng, rows, cols, 5)  # a slightly irregular skin outline
    rho = np.sqrt(((yy - cy) / b) ** 2 + (xx / a) ** 2) + wobble
    if not mlo:
        return rho, None
    # pectoral muscle: a triangle in the upper chest-wall corner with a bowed edge, and the
    # axillary tissue alongside it
    pw, ph = cols * rng.uniform(0.22, 0.38), rows * rng.uniform(0.35, 0.55)
    pect = xx / pw + yy / ph + 0.04 * _smooth_noise(rng, rows, cols, 3)
    rho = np.minimum(rho, np.maximum(xx / (1.4 * pw) + yy / (1.4 * ph) + wobble, 0.0))
    return rho, pect


def _anatomy(rng: np.random.Generator, rows: int, cols: int, view: str, density: str):
    """Smooth parts of the image (fat, fibroglandular tissue, muscle) with the shape fields.
    Everything here is smooth, so it is drawn at half size and upsampled by the caller."""
    rho, pect = _breast_shape(rng, rows, cols, view)
    thickness = np.sqrt(np.clip(1.0 - rho * rho, 0.0, 1.0))  # compressed breast thins to the skin
    fat = 0.22 + 0.14 * np.sqrt(thickness)
    thr = {"A": 1.1, "B": 0.55, "C": 0.0, "D": -0.55}[density]  # denser -> more glands
    glands = _smoothstep((_fractal_noise(rng, rows, cols) - thr) / 1.8)
    glands *= _smoothstep(thickness / 0.5)  # behind the nipple, not at the skin
    img = fat + 0.27 * glands
    if pect is not None:  # the muscle replaces the tissue under it, with a soft edge
        muscle = _smoothstep((1.0 - pect) * rows / 6)
        img += muscle * (0.6 + 0.04 * _smooth_noise(rng, rows, cols, 8) - img)
    return img, rho, pect


def _mass(rng: np.random.Generator, shape: tuple[int, int], cy: float, cx: float, radius: float):
    """An irregular, spiculated mass: (intensity float32, body mask bool) over the whole image."""
    rows, cols = shape
    r0, r1 = int(max(0, cy - 3 * radius)), int(min(rows, cy + 3 * radius + 1))
    c0, c1 = int(max(0, cx - 3 * radius)), int(min(cols, cx + 3 * radius + 1))
    yy = np.arange(r0, r1, dtype=np.float32)[:, None] - cy
    xx = np.arange(c0, c1, dtype=np.float32)[None, :] - cx
    theta, dist = np.arctan2(yy, xx), np.hypot(yy, xx)
    edge = np.ones_like(theta)
    for k in range(2, 8):  # lobulated outline
        edge += rng.uniform(0.03, 0.1) / (k / 2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    edge *= radius
    body = dist < edge
    core = _smoothstep((edge - dist) / (0.35 * radius))  # dense centre, soft rim
    spic = np.zeros(dist.shape, np.float32)
    thick = max(1, round(radius / 18))
    for ang in rng.uniform(0, 2 * np.pi, rng.integers(8, 17)):
        length = radius * rng.uniform(1.4, 2.4)
        end = (int(cx - c0 + length * np.cos(ang)), int(cy - r0 + length * np.sin(ang)))
        cv2.line(spic, (int(cx - c0), int(cy - r0)), end, 1.0, thick, cv2.LINE_AA)
    spic = cv2.GaussianBlur(spic, (0, 0), max(0.6, radius / 30))
    local = np.maximum(core, 0.45 * spic)
    out = np.zeros(shape, np.float32)
    mask = np.zeros(shape, bool)
    out[r0:r1, c0:c1], mask[r0:r1, c0:c1] = local, body
    return out, mask


def _calcifications(rng: np.random.Generator, shape: tuple[int, int], cy: float, cx: float,
                    radius: float, scale: float):
    """A cluster of tiny bright specks over a faint density (intensity float32) and the
    cluster's disk (bool), drawn in a window around the centre."""
    rows, cols = shape
    r0, r1 = int(max(0, cy - 2 * radius)), int(min(rows, cy + 2 * radius + 1))
    c0, c1 = int(max(0, cx - 2 * radius)), int(min(cols, cx + 2 * radius + 1))
    ly, lx = cy - r0, cx - c0
    local = np.zeros((r1 - r0, c1 - c0), np.float32)
    n = int(rng.integers(10, 26))
    pts = rng.normal(0, radius / 2.2, (n, 2))
    pts *= np.minimum(1.0, radius / (np.hypot(pts[:, 0], pts[:, 1]) + 1e-6))[:, None]
    for (dy, dx) in pts:
        r = max(1, round(rng.uniform(1.0, 2.6) * scale))
        cv2.circle(local, (int(lx + dx), int(ly + dy)), r, float(rng.uniform(0.8, 1.0)), -1, cv2.LINE_AA)
    local = cv2.GaussianBlur(local, (0, 0), max(0.5, 0.6 * scale))
    disk = np.zeros(local.shape, np.uint8)
    cv2.circle(disk, (int(lx), int(ly)), int(radius), 1, -1)
    haze = cv2.GaussianBlur(disk.astype(np.float32), (0, 0), radius / 3)
    out = np.zeros(shape, np.float32)
    mask = np.zeros(shape, bool)
    out[r0:r1, c0:c1] = np.maximum(local, 0.35 * haze)
    mask[r0:r1, c0:c1] = disk.astype(bool)
    return out, mask


def _place_lesion(rng: np.random.Generator, breast: np.ndarray, pect: np.ndarray, radius: float):
    """A random centre well inside the breast: away from the skin and from the pectoral muscle."""
    allowed = (breast & ~pect).astype(np.uint8)
    allowed[:, 0] = allowed[0, :] = allowed[-1, :] = 0  # keep the whole lesion inside the image
    dist = cv2.distanceTransform(allowed, cv2.DIST_L2, 5)
    step = max(1, breast.shape[0] // 256)  # a coarse grid of candidates is plenty
    sub = dist[::step, ::step]
    cand = np.flatnonzero(sub > 1.8 * radius)
    if cand.size == 0:
        cand = np.flatnonzero(sub >= sub.max() * 0.8)
    r, c = np.unravel_index(cand[rng.integers(cand.size)], sub.shape)
    return float(r * step), float(c * step)


def _draw_marker(img: np.ndarray, breast: np.ndarray, laterality: str, view: str) -> np.ndarray:
    """Burn a bright 'L-CC'-style label in a top corner away from the chest wall (in place)."""
    rows, cols = img.shape
    text, font = f"{laterality}-{view}", cv2.FONT_HERSHEY_SIMPLEX
    scale, thick = rows / 900, max(1, round(rows / 400))
    (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
    pad = max(2, rows // 150)
    x0 = cols - tw - 6 * pad if laterality == "L" else 3 * pad
    y0 = 3 * pad
    label = np.zeros(img.shape, np.uint8)
    cv2.rectangle(label, (x0 - pad, y0 - pad), (x0 + tw + pad, y0 + th + 2 * pad), 255, max(1, thick // 2))
    cv2.putText(label, text, (x0, y0 + th), font, scale, 255, thick, cv2.LINE_AA)
    marker = (label > 0) & ~breast
    img[marker] = np.maximum(img[marker], 0.97 * label[marker] / 255)
    return marker


def synthesize(rng: np.random.Generator, rows: int, cols: int, laterality: str, view: str, *,
               lesion_kind: str | None = None, radius_frac: float | None = None,
               density: str = "B") -> SynthImage:
    """One mammogram in the stored geometry: L has the chest wall on the left edge, R on the right.

    `lesion_kind` (mass | calcification | both) adds a lesion whose radius is `radius_frac` of the
    breast height (default drawn from 0.03..0.06, i.e. a diameter of 6-12 %)."""
    if laterality not in ("L", "R") or view not in ("CC", "MLO"):
        raise ConfigError(f"synth: laterality must be L or R and view CC or MLO, got {laterality!r}, {view!r}")
    if lesion_kind is not None and lesion_kind not in KINDS:
        raise ConfigError(f"synth: lesion kind {lesion_kind!r} is unknown; {suggest(lesion_kind, KINDS)}")
    h, w = (rows + 1) // 2, (cols + 1) // 2
    base, rho, pect = (None if f is None else _upsample(f, rows, cols)
                       for f in _anatomy(rng, h, w, view, density))
    breast = rho < 1.0
    pect = pect < 1.0 if pect is not None else np.zeros((rows, cols), bool)
    fine = _smooth_noise(rng, rows, cols, 128)
    img = base + 0.025 * fine

    # Skin line: a thin bright band along the outline (the chest-wall edge has no skin).
    inside = cv2.distanceTransform(breast.astype(np.uint8), cv2.DIST_L2, 3)
    skin_px = max(1.5, rows / 450)
    near = inside < 4 * skin_px
    img[near] += 0.18 * np.exp(-((inside[near] - skin_px) / skin_px) ** 2)

    np.copyto(img, np.float32(0.03), where=~breast)  # air
    mask = np.zeros((rows, cols), np.uint8)
    lesion = None
    if lesion_kind is not None:
        height = rows * 0.85
        radius = height * (radius_frac if radius_frac is not None else rng.uniform(0.03, 0.06))
        cy, cx = _place_lesion(rng, breast, pect, radius)
        scale = rows / 1024
        delta = rng.uniform(0.2, 0.27)
        region = np.zeros((rows, cols), bool)
        if lesion_kind in ("mass", "both"):
            mass, body = _mass(rng, (rows, cols), cy, cx, radius)
            # Denser than any gland around it (glands reach ~0.65), so that a small model can learn
            # masses from a few hundred images, as the demo and tests need.
            img = np.maximum(img + delta * mass, rng.uniform(0.78, 0.86) * mass)
            region |= body
        if lesion_kind in ("calcification", "both"):
            calc_r = radius * (0.7 if lesion_kind == "both" else 1.0)
            specks, disk = _calcifications(rng, (rows, cols), cy, cx, calc_r, scale)
            img += 0.4 * specks
            region |= disk
        mask[region & breast] = 255
        lesion = Lesion(lesion_kind, int(round(cy)), int(round(cx)), int(round(radius)))

    img += _grain(rng, img.shape, 0.005)  # quantum noise
    img = np.clip(img, 0.0, 1.0)
    if laterality == "R":  # mirror so the chest wall is on the right
        img, mask, breast = img[:, ::-1].copy(), mask[:, ::-1].copy(), breast[:, ::-1].copy()
        if lesion is not None:
            lesion.center_col = cols - 1 - lesion.center_col
    marker = _draw_marker(img, breast, laterality, view)
    return SynthImage(img, mask, breast, marker, lesion)


def make_image(rng: np.random.Generator, rows: int, cols: int, laterality: str, view: str,
               lesion: bool) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 in [0, 1], lesion mask uint8 0/255) — `synthesize` with a random lesion kind."""
    kind = str(rng.choice(KINDS, p=[0.6, 0.15, 0.25])) if lesion else None
    out = synthesize(rng, rows, cols, laterality, view, lesion_kind=kind)
    return out.image, out.mask
