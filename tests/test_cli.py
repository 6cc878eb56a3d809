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
        "heavy = [m for m in ('torch', 'timm', 'monai', 'albumentations', 'pandas', 'cv2', 'sklearn') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout


def test_medvit_error_becomes_exit_2(capsys, tmp_path):
    rc = main(["train", "--config", str(tmp_path / "missing.yaml")])
    assert rc == 2
    assert "missing.yaml" in capsys.readouterr().err
