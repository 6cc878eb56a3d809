import subprocess
import sys

import pytest

from medvit import __version__
from medvit.cli import build_parser, main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: medvit" in capsys.readouterr().out


def test_help_lists_only_commands_that_exist():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    names = set(sub.choices)
    assert {"synth", "ingest", "train"} <= names
    for name in names:
        assert callable(sub.choices[name].get_default("func"))


def test_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from medvit.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'timm', 'monai', 'albumentations', 'pandas', 'cv2', 'sklearn') "
        "if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout


def test_medvit_error_becomes_exit_2(capsys, tmp_path):
    rc = main(["train", "--config", str(tmp_path / "missing.yaml")])
    assert rc == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_overrides_and_flags_intermixed():
    """Issue 11: `train --backbone basic_cnn data.kind=mnist --max-steps 20 data.workers=0` was
    'unrecognized arguments: data.workers=0'."""
    from medvit.cli import build_parser, parse_args
    from medvit.commands.train import build_config

    argv = ["train", "--backbone", "cnn_test", "data.kind=mnist", "--max-steps", "20", "data.workers=0",
            "--seed", "3", "optim.lr=0.1"]
    args = parse_args(build_parser(), argv)
    assert args.overrides == ["data.kind=mnist", "data.workers=0", "optim.lr=0.1"]
    cfg = build_config(args)
    assert (cfg.data.kind, cfg.data.workers, cfg.train.max_steps, cfg.train.seed, cfg.optim.lr) == (
        "mnist", 0, 20, 3, 0.1)


def test_stray_arguments_still_rejected(capsys):
    from medvit.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--backbone", "cnn_test", "data.kind=mnist", "--max-stepz", "3"])
    assert "unrecognized arguments: --max-stepz 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a command without overrides takes no key=value
        main(["evaluate", "run", "optim.lr=1"])
