"""The image canvas: H x W of the preprocessed image (`ingest --size`) and of the model input
(`train --image-size`). One representation everywhere: a tuple (H, W) in code, the text "HxW"
(e.g. "512x256") in JSON, CSV, checkpoints and configs. A single number means a square.

Light on purpose (no numpy, no torch): the CLI and the manifest reader import it."""
from __future__ import annotations

import re
from typing import Any

Size = tuple[int, int]
MIN_SIDE, MAX_SIDE = 1, 65535
_TEXT = re.compile(r"^\s*(\d+)\s*(?:[xX×*,]\s*(\d+))?\s*$")


def parse_size(value: Any, what: str = "size") -> Size:
    """(H, W) from 512, "512", "512x256", [512, 256] or (512, 256). ValueError naming `what`
    and the accepted forms otherwise."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, int):
        h = w = value
    elif isinstance(value, str) and _TEXT.match(value):
        m = _TEXT.match(value)
        h, w = int(m.group(1)), int(m.group(2) or m.group(1))
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        h, w = int(value[0]), int(value[1])
    else:
        raise ValueError(f"{what} {value!r}: give one side (512) or HxW (512x256, 1024x512)")
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise ValueError(f"{what} {h}x{w}: each side must be within {MIN_SIDE}..{MAX_SIDE}")
    return h, w


def size_text(size: Any) -> str:
    """"HxW" for any form `parse_size` accepts ("512x512" for a square)."""
    h, w = parse_size(size)
    return f"{h}x{w}"


def compact(size: Any) -> int | tuple[int, int]:
    """A square as its side (512), anything else as (H, W): the form configs and model specs keep,
    so square runs read exactly as they did before canvases could be rectangular."""
    h, w = parse_size(size)
    return h if h == w else (h, w)


def argparse_size(text: str) -> Size:
    """`type=` for argparse flags (`--size`, `--image-size`): a clean error line on bad input."""
    import argparse

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
