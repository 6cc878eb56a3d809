"""Progress output: a tqdm bar on a terminal, plain lines off one (issue 11: a 10-epoch demo log
redirected to a file was mostly carriage-return bar fragments)."""
from __future__ import annotations

import io
from pathlib import Path

from fake_cache import make_manifest
from medvit.config import load_config
from medvit.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(bar, n: int) -> None:
    for _ in range(n):
        bar.update(1)
    bar.close()


def test_plain_lines_off_a_terminal_and_a_bar_on_one():
    log = io.StringIO()
    run(progress_bar(total=25, desc="ingest", unit="img", file=log), 25)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert [line.split(" img")[0] for line in lines] == ["ingest: 3/25", "ingest: 6/25", "ingest: 9/25",
                                                         "ingest: 12/25", "ingest: 15/25", "ingest: 18/25",
                                                         "ingest: 21/25", "ingest: 24/25", "ingest: 25/25"]
    quiet = io.StringIO()
    run(progress_bar(total=25, desc="x", file=quiet, every=0), 25)
    run(progress_bar(total=25, desc="x", file=quiet, enabled=False), 25)
    assert quiet.getvalue() == ""
    tty = Terminal()
    run(progress_bar(total=25, desc="ingest", file=tty), 25)
    assert "\r" in tty.getvalue()  # the bar, on a terminal


def test_training_log_off_a_terminal_has_no_bar_fragments(tmp_path, capfd):
    from medvit.train import fit

    data = make_manifest(tmp_path / "data", 16)
    cfg = load_config(None, [f"data.dir={data}", "data.image_size=16", "data.batch_size=4", "data.workers=0",
                             "model.backbone=cnn_test", "train.epochs=2", "train.device=cpu"])
    fit(cfg, tmp_path / "run")
    err = capfd.readouterr().err  # stderr is a file here, as under `> log` or nohup
    assert "\r" not in err and "batch/s" not in err and "it/s" not in err
    assert err.count(": train_loss ") == 2  # the plain line per epoch
    assert "\r" not in (Path(tmp_path / "run") / "train.log").read_text()
