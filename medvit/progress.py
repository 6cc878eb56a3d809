"""Progress for long loops: a tqdm bar on a terminal, plain lines off one.

Off a terminal (CI, `> log`, `nohup`) a tqdm bar writes thousands of carriage-return updates
into the file. `progress_bar` gives a bar only when the stream is a terminal; otherwise one
plain line every `every` items (default: each tenth of the total) and one at the end, or
nothing with `every=0` (the trainer already logs a line per epoch). Everything here takes the
stream at call time (`sys.stderr` by default), so redirections and pytest's capture apply.

    bar = progress_bar(total=len(files), desc="ingest", unit="img")
    for f in files:
        ...
        bar.update(1)
    bar.close()
"""
from __future__ import annotations

import math
import sys
import time
from typing import IO, Any


class PlainProgress:
    """The off-terminal stand-in for a tqdm bar: `update(n)` and `close()`, one line per `every` items."""

    def __init__(self, total: int, desc: str, unit: str, every: int, file: IO[str], initial: int = 0) -> None:
        self.total, self.desc, self.unit, self.every, self.file = total, desc, unit, every, file
        self.n = self.last = self.initial = initial
        self.start = time.perf_counter()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.every and self.n - self.last >= self.every and self.n < self.total:
            self._line()

    def _line(self) -> None:
        seconds = time.perf_counter() - self.start
        rate = (self.n - self.initial) / seconds if seconds > 0 else 0.0
        print(f"{self.desc}: {self.n}/{self.total} {self.unit} ({rate:.1f} {self.unit}/s, {seconds:.0f} s)",
              file=self.file, flush=True)
        self.last = self.n

    def close(self) -> None:
        if not self.closed and self.every and self.n > self.last:
            self._line()
        self.closed = True


def progress_bar(total: int, desc: str, unit: str = "it", *, enabled: bool | None = None,
                 every: int | None = None, file: IO[str] | None = None, initial: int = 0,
                 leave: bool = True) -> Any:
    """A tqdm bar (`enabled` True, or None on a terminal), plain lines (None off a terminal),
    or nothing (`enabled` False). `every`: items per plain line (default a tenth of `total`;
    0 = no lines)."""
    stream = file if file is not None else sys.stderr
    if enabled is False:
        return PlainProgress(total, desc, unit, 0, stream, initial)
    tty = bool(getattr(stream, "isatty", lambda: False)())
    if enabled or tty:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=stream, initial=initial, leave=leave,
                    smoothing=0.05, dynamic_ncols=True)
    step = max(1, math.ceil(total / 10)) if every is None else every
    return PlainProgress(total, desc, unit, step, stream, initial)
